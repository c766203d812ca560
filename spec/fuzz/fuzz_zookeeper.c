/* libFuzzer target: the ZooKeeper backend (backends/zookeeper.c) with the
 * client library replaced by spec/fuzz/fake_zookeeper.c, so the input
 * decides every reply: node data (the leader's value), child names (the
 * queue and its sequence numbers), czxids (terms), return codes, watch
 * events and session states. Two candidates and a follower on one key.
 *
 *   U<n>                       first line only: the n-th URL below
 *   R<i>,<rc>,<czxid>,<payload>  complete the i-th pending call; payload:
 *                              node data, or children "a,b,c" ("$0".."$7":
 *                              the nodes created so far), or for a create
 *                              the sequence number
 *   W<i>,<type>                fire the i-th watch (1 created, 2 deleted,
 *                              3 changed, 4 child)
 *   C<ms>                      session connected (negotiated timeout ms)
 *   D  X  A                    connecting again / expired / auth failed
 *   T  L  r  x  c  f           timers, loop, A resigns/stops/runs, F stops
 */
#include "../../backends/zookeeper.c"
#include "fake_zookeeper.c"
#include "script.h"

static const char *const fuzz_urls[] = {
    "zk://127.0.0.1:2181",
    "zk://127.0.0.1:2181,127.0.0.2:2181/chroot",
    "zk://user:secret@127.0.0.1:2181",
    "zk://127.0.0.1:2181?session_timeout=3",
    NULL,
};

static void reply(const char *p, const char *end)
{
    unsigned i = (unsigned)field(&p, end);
    int rc = (int)field(&p, end);
    long long czxid = field(&p, end);
    fake_op *op = fake_take(i);
    if (!op)
        return;
    if (op->kind == K_CREATED && p < end) {
        const char *q = p;
        fake_seq = field(&q, end);
    }
    fake_complete(op, rc, czxid, p, (size_t)(end - p));
}

static void wind_down(ls_election **elections, size_t n, ls_store *store)
{
    for (size_t i = 0; i < n; i++)
        finish(&elections[i]);
    ls_store_unref(store);
    for (int round = 0; round < 64; round++) {
        fuzz_drain_loop();
        bool any = false;
        fake_op *op;
        while ((op = fake_take(0))) {
            /* deletes succeed; later rounds: the session is gone */
            fake_complete(op, round < 8 ? ZOK : ZCLOSING, 0, "", 0);
            any = true;
        }
        if (round == 8 && fake_current) {
            fake_session(ZOO_EXPIRED_SESSION_STATE, 0);
            any = true;
        }
        if (fuzz_fire_timers() > 0)
            any = true;
        if (!any && !fake_ops && fake_handles == 0)
            break;
    }
    fuzz_drain_loop();
    /* closing a store ends all of its work */
    FUZZ_ASSERT(fake_ops == NULL);
    FUZZ_ASSERT(fake_watches == NULL);
    FUZZ_ASSERT(fake_handles == 0);
    FUZZ_ASSERT(ls_store_live_count() == 0);
    FUZZ_ASSERT(ls_election_live_count() == 0);
    FUZZ_ASSERT(ls_loop_holds() == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    const char *p = (const char *)data, *end = p + size;
    size_t which = 0;
    if (p < end && *p == 'U') {
        size_t len;
        const char *line = next_line(&p, end, &len);
        const char *q = line + 1;
        which = (size_t)field(&q, line + len) % 4;
    }
    fake_seq = 0;
    fake_nmade = 0;
    ls_store_config cfg = {0};
    char err[512];
    FUZZ_ASSERT(ls_config_parse(&cfg, fuzz_urls[which], err, sizeof err) == 0);
    ls_store *store = ls_store_open(&cfg, err, sizeof err);
    FUZZ_ASSERT(store != NULL);
    ls_election *elections[3];
    elections[0] = candidate(store, "node-a", 2);
    elections[1] = candidate(store, "{\"name\":\"node-b\"}", 2);
    elections[2] = follower(store, 2);

    for (int steps = 0; p < end && steps < 200; steps++) {
        size_t len;
        const char *line = next_line(&p, end, &len);
        if (len == 0)
            continue;
        const char *arg = line + 1, *stop = line + len;
        switch (line[0]) {
        case 'R':
            reply(arg, stop);
            break;
        case 'W': {
            unsigned i = (unsigned)field(&arg, stop);
            fake_fire_watch(i, (int)field(&arg, stop));
            break;
        }
        case 'C':
            fake_session(ZOO_CONNECTED_STATE, (int)field(&arg, stop));
            break;
        case 'D':
            fake_session(ZOO_CONNECTING_STATE, 0);
            break;
        case 'X':
            fake_session(ZOO_EXPIRED_SESSION_STATE, 0);
            break;
        case 'A':
            fake_session(ZOO_AUTH_FAILED_STATE, 0);
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
                elections[0] = candidate(store, "node-a", 2);
            break;
        case 'f':
            finish(&elections[2]);
            break;
        default:
            break;
        }
        fuzz_drain_loop();
    }
    wind_down(elections, 3, store);
    return 0;
}
