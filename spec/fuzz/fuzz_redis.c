#define _GNU_SOURCE
/* libFuzzer target: the Redis backend (backends/redis.c) against a server
 * in this process whose every reply comes from the input: the handshake
 * (AUTH, SELECT, SCRIPT LOAD), the acquire/renew/read/release scripts'
 * replies the backend interprets (leases "<term>\n<token>\n<value>", TTLs,
 * errors such as NOSCRIPT), and pub/sub messages. hiredis talks to it over
 * real sockets, on the same loop, so the backend runs as it does in
 * production, with one stand-in: its connections are Unix-domain sockets,
 * not TCP. The server drops the backend some 30 times per input, and TCP's
 * handshakes, FINs and TIME_WAITs took 60% of the time: over a Unix
 * socket the corpus runs 1.7 times as fast. What is fuzzed, the bytes
 * the backend reads, is the same; the TCP connect path and keepalive are
 * the Redis tests' (spec/50_redis_spec.lua).
 *
 * Input: a byte choosing the URL, then steps: a byte (modulo 8) and its
 * chunk (fuzz.h) where it takes one:
 *   0 bytes to the command connection   1 bytes to the pub/sub connection
 *   2 the server closes the command connection   3 ... the pub/sub one
 *   4 timers   5 loop   6 A resigns   7 A stops / runs again
 */
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

static char socket_path[108];

/* The backend's connect, to the server's Unix socket; the address, from
 * the URL, is only a name here. Keepalive is TCP's: not on this socket. */
static redisAsyncContext *connect_to_server(const char *ip, int port)
{
    return redisAsyncConnectUnix(socket_path);
}
static int no_keepalive(redisContext *c) { return REDIS_OK; }
#define redisAsyncConnect connect_to_server
#define redisEnableKeepAlive no_keepalive
#include "../../backends/redis.c"
#undef redisAsyncConnect
#undef redisEnableKeepAlive

#include <poll.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "script.h"
#include "sweep.h"

static int listener = -1;

static void remove_socket(void) { unlink(socket_path); }

/* The server side of the backend's connections. It sends what the input
 * says, asked for or not, garbage included: the backend screens every
 * byte before hiredis 0.14 sees it (backends/redis.c, "what hiredis is
 * given"), so nothing the server sends may crash it. */
typedef struct peer {
    int fd;
    bool sub;              /* it sent SUBSCRIBE: the pub/sub connection */
    bool known;            /* what it is has been told */
    short ready;           /* the last poll's revents: bytes, or an end, to read */
    redisReader *commands; /* what the backend sent */
} peer;
static peer peers[16];
static size_t npeers;

static void listen_once(void)
{
    if (listener >= 0)
        return;
    fuzz_sweep("/tmp", "leadership-fuzz-redis-");
    snprintf(socket_path, sizeof socket_path, "/tmp/leadership-fuzz-redis-%d.sock", (int)getpid());
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path, socket_path, strlen(socket_path));
    listener = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    FUZZ_ASSERT(listener >= 0 && bind(listener, (struct sockaddr *)&a, sizeof a) == 0 &&
                listen(listener, 16) == 0);
    atexit(remove_socket);
}

static void peer_close(size_t i)
{
    close(peers[i].fd);
    redisReaderFree(peers[i].commands);
    peers[i] = peers[--npeers];
}

/* Reads the commands the backend sent: a SUBSCRIBE tells the connection. */
static void peer_heard(peer *pe, const char *buf, size_t n)
{
    redisReaderFeed(pe->commands, buf, n);
    void *cmd;
    while (redisReaderGetReply(pe->commands, &cmd) == REDIS_OK && cmd) {
        redisReply *r = cmd;
        bool subscribe = r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
                         r->element[0]->type == REDIS_REPLY_STRING &&
                         !strcasecmp(r->element[0]->str, "SUBSCRIBE");
        if (getenv("FUZZ_LOG"))
            fprintf(stderr, "fuzz_redis: fd %d heard %s\n", pe->fd,
                    r->type == REDIS_REPLY_ARRAY && r->elements ? r->element[0]->str : "?");
        /* both connections may start with AUTH: a SUBSCRIBE tells */
        pe->known = true;
        pe->sub = pe->sub || subscribe;
        freeReplyObject(r);
    }
}

/* Accepts new connections, reads what the backend sent, notices the ones
 * it closed: on new peers and those the last poll found ready. True if it
 * closed one. */
static bool serve(void)
{
    bool closed = false;
    /* not polled yet: read up to EAGAIN, as if an end were seen */
    for (int fd;
         npeers < 16 && (fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0;)
        peers[npeers++] = (peer){.fd = fd, .ready = POLLRDHUP, .commands = redisReaderCreate()};
    for (size_t i = 0; i < npeers;) {
        if (!peers[i].ready) {
            i++;
            continue;
        }
        char buf[4096];
        ssize_t n = recv(peers[i].fd, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            peer_close(i);
            closed = true;
            continue;
        }
        if (n > 0)
            peer_heard(&peers[i], buf, (size_t)n);
        /* a short read took all there was (the loop has not run since the
         * poll); an end it saw is still to be read */
        if (n < 0 ||
            ((size_t)n < sizeof buf && !(peers[i].ready & (POLLRDHUP | POLLHUP | POLLERR))))
            i++;
    }
    return closed;
}

/* What pending() polls: the listener, the peers, then the loop's fds. */
static struct pollfd waits[1 + 16 + 32];
static nfds_t nwaits;
static struct event *clock_probe;

static void probe_cb(evutil_socket_t fd, short what, void *arg) { abort(); }

typedef struct scan {
    struct timeval now; /* the loop's clock, as event_pending gives times */
    bool ready;         /* an event active or a timer due, or too many fds to poll */
} scan;

/* Adds ev's fd to the poll; notes a timer due by now. */
static int scan_event(const struct event_base *base, const struct event *ev, void *arg)
{
    scan *sc = arg;
    short what = event_get_events(ev);
    struct timeval at;
    if (ev == clock_probe)
        return 0;
    if ((what & (EV_READ | EV_WRITE)) && nwaits == sizeof waits / sizeof waits[0])
        sc->ready = true;
    else if (what & (EV_READ | EV_WRITE))
        waits[nwaits++] = (struct pollfd){
            .fd = event_get_fd(ev),
            .events = (short)((what & EV_READ ? POLLIN : 0) | (what & EV_WRITE ? POLLOUT : 0))};
    if (event_pending(ev, EV_TIMEOUT, &at) && !evutil_timercmp(&at, &sc->now, >))
        sc->ready = true;
    return 0;
}

/* What a round would do: *server, serve() has a connection to accept or a
 * peer to read; *loop, the loop has an event active, a timer due or an fd
 * ready for its event. Neither: no round after would do anything either. */
static void pending(bool *server, bool *loop)
{
    struct event_base *base = ls_loop_base();
    if (!clock_probe)
        clock_probe = evtimer_new(base, probe_cb, NULL);
    /* a zero timer's deadline is now on the loop's own clock */
    static const struct timeval zero = {0, 0};
    scan sc = {.ready = event_base_get_num_events(base, EVENT_BASE_COUNT_ACTIVE) > 0};
    evtimer_add(clock_probe, &zero);
    event_pending(clock_probe, EV_TIMEOUT, &sc.now);
    waits[0] = (struct pollfd){.fd = listener, .events = npeers < 16 ? POLLIN : 0};
    for (size_t i = 0; i < npeers; i++)
        waits[1 + i] = (struct pollfd){.fd = peers[i].fd, .events = POLLIN | POLLRDHUP};
    nwaits = 1 + npeers;
    event_base_foreach_event(base, scan_event, &sc);
    evtimer_del(clock_probe);
    /* libFuzzer's SIGALRM (every -timeout/2 + 1 s) can land inside poll */
    int n;
    while ((n = poll(waits, nwaits, 0)) < 0 && errno == EINTR)
        ;
    FUZZ_ASSERT(n >= 0);
    *server = waits[0].revents != 0;
    for (size_t i = 0; i < npeers; i++)
        *server |= (peers[i].ready = waits[1 + i].revents) != 0;
    *loop = sc.ready;
    for (nfds_t i = 1 + npeers; i < nwaits; i++)
        *loop |= waits[i].revents != 0;
}

/* The newest connection of the kind, or -1. */
static int newest(bool sub)
{
    for (size_t i = npeers; i-- > 0;)
        if (peers[i].known && peers[i].sub == sub)
            return (int)i;
    return -1;
}

/* Up to 4 rounds of serve() and the loop, while either has anything to do.
 * The loop also runs after serve() closed a peer: the backend has an end
 * to read. What serve() reads gives it nothing: its commands never fill a
 * socket's buffer, so none of its writes waits on one. */
static void step_loop(void)
{
    for (int i = 0; i < 4; i++) {
        bool server, loop;
        pending(&server, &loop);
        if (!server && !loop)
            break;
        if ((server && serve()) || loop)
            fuzz_drain_loop();
    }
}

static void wind_down(ls_election **elections, size_t n, ls_store *store)
{
    for (size_t i = 0; i < n; i++)
        finish(&elections[i]);
    ls_store_unref(store);
    for (int round = 0; round < 64; round++) {
        step_loop();
        /* the server goes away: what is in flight ends */
        bool any = npeers > 0;
        while (npeers > 0)
            peer_close(0);
        if (fuzz_fire_timers() > 0)
            any = true;
        if (!any)
            break;
    }
    step_loop();
    while (npeers > 0)
        peer_close(0);
    /* closing a store ends all of its work */
    FUZZ_ASSERT(ls_store_live_count() == 0);
    FUZZ_ASSERT(ls_election_live_count() == 0);
    FUZZ_ASSERT(ls_loop_holds() == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    listen_once();
    fuzz_in in = {data, size};
    static const char *const variants[] = {"", "?db=2", "?auth.password=secret&poll_interval=0.5",
                                           "?auth.username=u&auth.password=p&db=1"};
    char url[160];
    snprintf(url, sizeof url, "redis://127.0.0.1:6379%s", variants[fuzz_byte(&in) % 4]);
    ls_store_config cfg = {0};
    char err[512];
    FUZZ_ASSERT(ls_config_parse(&cfg, url, err, sizeof err) == 0);
    ls_store *store = ls_store_open(&cfg, err, sizeof err);
    FUZZ_ASSERT(store != NULL);
    ls_election *elections[3];
    elections[0] = candidate(store, "node-a", 2);
    elections[1] = candidate(store, "{\"name\":\"node-b\"}", 2);
    elections[2] = follower(store, 2);
    step_loop();

    for (int steps = 0; !fuzz_done(&in) && steps < 100; steps++) {
        unsigned op = fuzz_byte(&in) % 8;
        size_t len;
        const char *bytes;
        int i;
        switch (op) {
        case 0:
        case 1:
            bytes = fuzz_chunk(&in, &len);
            if ((i = newest(op == 1)) >= 0 && len > 0)
                (void)!send(peers[i].fd, bytes, len, MSG_NOSIGNAL);
            break;
        case 2:
        case 3:
            if ((i = newest(op == 3)) >= 0)
                peer_close((size_t)i);
            break;
        case 4:
            fuzz_fire_timers();
            break;
        case 5:
            break;
        case 6:
            if (elections[0])
                ls_election_resign(elections[0]);
            break;
        case 7:
            if (elections[0])
                finish(&elections[0]);
            else
                elections[0] = candidate(store, "node-a", 2);
            break;
        }
        step_loop();
    }
    wind_down(elections, 3, store);
    return 0;
}
