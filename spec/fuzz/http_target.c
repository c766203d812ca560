/* The driver shared by the fuzz targets of the HTTP backends: the input is
 * a script of what the "server" does, one line per step, run against a
 * store of the target's backend with two candidates and a follower on one
 * key, all through the real engine. Then everything stops, whatever is
 * still pending fails, and nothing may remain: no request, no election,
 * no store, no hold on the loop.
 *
 *   U<n>                       first line only: the n-th of the target's URLs
 *   R<i>,<status>,<index>,<body>  answer the i-th pending request (status 0:
 *                              a transport failure); <index> is sent as the
 *                              X-Consul-Index header when > 0
 *   S<body>  s<body>           data on the newest stream, with / without '\n'
 *   E<status>                  the newest stream ends
 *   T                          time jumps past every timer
 *   L                          the loop runs what is ready
 *   r  x  c  f                 candidate A resigns / stops / runs again;
 *                              the follower stops
 *
 * The target defines fuzz_urls (NULL-terminated) and includes its backend,
 * fake_http.c and this file. */
#include "script.h"

static void answer(const char *p, const char *end)
{
    unsigned i = (unsigned)field(&p, end);
    long status = field(&p, end);
    long index = field(&p, end);
    ls_http_request *r = fake_unary(i);
    if (!r)
        return;
    char value[32];
    snprintf(value, sizeof value, "%ld", index);
    ls_http_header header = {.name = "X-Consul-Index", .value = value};
    fake_finish(r, status, status == 0 ? "fuzz: connection refused" : NULL, p, (size_t)(end - p),
                &header, index > 0 ? 1 : 0);
}

/* Stops and frees everything, fails what is pending until nothing is. */
static void wind_down(ls_election **elections, size_t n, ls_store *store)
{
    for (size_t i = 0; i < n; i++)
        finish(&elections[i]);
    ls_store_unref(store);
    for (int round = 0; round < 64; round++) {
        fuzz_drain_loop();
        ls_http_request *r;
        bool any = false;
        while ((r = fake_unary(0))) {
            fake_finish(r, 0, "fuzz: the server is gone", "", 0, NULL, 0);
            any = true;
        }
        while ((r = fake_stream())) {
            fake_finish(r, 0, "fuzz: the server is gone", "", 0, NULL, 0);
            any = true;
        }
        if (fuzz_fire_timers() > 0)
            any = true;
        if (!any && !fake_head)
            break;
    }
    /* closing a store ends all of its work */
    FUZZ_ASSERT(fake_head == NULL);
    FUZZ_ASSERT(fake_live_clients == 0);
    FUZZ_ASSERT(ls_store_live_count() == 0);
    FUZZ_ASSERT(ls_election_live_count() == 0);
    FUZZ_ASSERT(ls_loop_holds() == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    const char *p = (const char *)data, *end = p + size;
    size_t nurls = 0;
    while (fuzz_urls[nurls])
        nurls++;
    size_t which = 0;
    if (p < end && *p == 'U') {
        size_t len;
        const char *line = next_line(&p, end, &len);
        const char *q = line + 1;
        which = (size_t)field(&q, line + len) % nurls;
    }
    ls_store_config cfg = {0};
    char err[512];
    FUZZ_ASSERT(ls_config_parse(&cfg, fuzz_urls[which], err, sizeof err) == 0);
    ls_store *store = ls_store_open(&cfg, err, sizeof err);
    FUZZ_ASSERT(store != NULL);
    ls_election *elections[3];
    elections[0] = candidate(store, "node-a", 15);
    elections[1] = candidate(store, "{\"name\":\"node-b\"}", 15);
    elections[2] = follower(store, 15);

    for (int steps = 0; p < end && steps < 200; steps++) {
        size_t len;
        const char *line = next_line(&p, end, &len);
        if (len == 0)
            continue;
        const char *arg = line + 1, *stop = line + len;
        ls_http_request *stream = fake_stream();
        switch (line[0]) {
        case 'R':
            answer(arg, stop);
            break;
        case 'S':
        case 's':
            if (stream) {
                char *chunk = malloc((size_t)(stop - arg) + 1);
                memcpy(chunk, arg, (size_t)(stop - arg));
                chunk[stop - arg] = '\n';
                fake_stream_data(stream, chunk, (size_t)(stop - arg) + (line[0] == 'S'));
                free(chunk);
            }
            break;
        case 'E':
            if (stream) {
                long status = field(&arg, stop);
                fake_finish(stream, status, status == 0 ? "fuzz: reset by peer" : NULL, "", 0, NULL,
                            0);
            }
            break;
        case 'T':
            fuzz_fire_timers();
            break;
        case 'L':
            fuzz_drain_loop();
            break;
        case 'r':
            if (elections[0])
                ls_election_resign(elections[0]);
            break;
        case 'x':
            finish(&elections[0]);
            break;
        case 'c':
            if (!elections[0])
                elections[0] = candidate(store, "node-a", 15);
            break;
        case 'f':
            finish(&elections[2]);
            break;
        default:
            break;
        }
    }
    wind_down(elections, 3, store);
    return 0;
}
