/* The Redis store: one server, hiredis's async API on the process loop.
 *
 * Data model, per election key K (all written by the scripts below only):
 *   K          the lease: "<term>\n<holder token>\n<value>", with a PX expiry
 *              of the ttl. The token is 16 random hex digits per campaign,
 *              so two candidates with the same value are still told apart.
 *              A lease with an empty token ("<term>\n\n") is a tombstone:
 *              see "data loss" below. Readers report it as vacancy.
 *   K:term     the fencing counter, INCRed by every acquisition.
 *   K:events   a pub/sub channel; acquire and release publish to it.
 *
 * Acquire is SET K NX PX inside a script that INCRs K:term in the same
 * step, so a term is handed out exactly once per acquisition. Renew
 * (PEXPIRE) and release (DEL) run as scripts that first check that K still
 * holds our term and token. Scripts go by EVALSHA (their SHA1s come from
 * SCRIPT LOAD on each new connection) and fall back to EVAL on NOSCRIPT;
 * a release, sent once per leadership, always goes by EVAL and is not
 * loaded.
 *
 * Expiry publishes nothing (keyspace notifications are off by default), so
 * waiting candidates and followers re-read when the lease they saw is due
 * to expire, at least every poll_interval, on every pub/sub message, and
 * after every (re)subscription: pub/sub is lossy across reconnects, reads
 * are the truth. Reads and acquires go over one connection, so their
 * replies arrive in the order the server ran them: no stale leader is ever
 * reported after a newer one. Pub/sub only says "look again".
 *
 * Data loss: a Redis restarted without persistence forgets K and K:term.
 * Each store remembers the highest term it has seen per key and passes it
 * to acquire as a floor. Acquire finding K:term below the floor knows the
 * server lost data: it restores the counter, and if K is gone writes a
 * tombstone for a ttl, because the last leader may be alive and still
 * acting on its lease. That leader's next renew finds the tombstone (or no
 * key and a counter below its term) and puts its lease back with the same
 * term. So terms keep rising and live processes never see two leaders
 * across a restart. A process that never saw the old term cannot know;
 * the README says so: one Redis gives no guarantee under failover.
 */
#define _GNU_SOURCE /* memmem */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "../runtime/log.h"
#include "store.h"

/* ---- the server-side scripts ---- */

/* PUBLISH only wakes watchers, who poll as well: it goes by redis.pcall,
 * so a user without channel rights (Redis 7's ACL default) still gets the
 * writes before it, which a failed script would keep but not report. */

enum { SCRIPT_ACQUIRE, SCRIPT_RENEW, SCRIPT_RELEASE, SCRIPT_READ, NSCRIPTS };

/* KEYS: lease, counter. ARGV: token, value, ttl ms, floor term, channel.
 * Returns {1, lease} when we hold it, {0, lease, pttl} when someone else
 * does. A lease already carrying our token (a reply lost to a reconnect)
 * is ours: it keeps its term and gets our value and a fresh ttl.
 * The floor is the highest term we have seen. After data loss (a counter
 * below it, or a lease of an older term brought back by a restart) whoever
 * holds the floor's term may still be acting: a tombstone of that term
 * waits out one ttl, which that holder's renew turns back into its lease,
 * and no older term is ever handed out or taken back. */
static const char acquire_script[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "local count = tonumber(redis.call('GET', KEYS[2]) or '0')\n"
    "if not count then return redis.error_reply('counter '..KEYS[2]..' is not a number') end\n"
    "local floor = tonumber(ARGV[4])\n"
    "if count < floor then redis.call('SET', KEYS[2], floor) end\n"
    "local t, holder\n"
    "if cur then t, holder = string.match(cur, '^(%d+)\\n([^\\n]*)\\n') end\n"
    "if (not cur and count < floor) or (t and tonumber(t) < floor) then\n"
    "  cur = floor .. '\\n\\n'\n"
    "  redis.call('SET', KEYS[1], cur, 'PX', ARGV[3])\n"
    "  return {0, cur, tonumber(ARGV[3])}\n"
    "end\n"
    "if cur then\n"
    "  if holder == ARGV[1] then\n"
    "    cur = t .. '\\n' .. ARGV[1] .. '\\n' .. ARGV[2]\n"
    "    redis.call('SET', KEYS[1], cur, 'PX', ARGV[3])\n"
    "    return {1, cur}\n"
    "  end\n"
    "  return {0, cur, redis.call('PTTL', KEYS[1])}\n"
    "end\n"
    "local term = redis.call('INCR', KEYS[2])\n"
    "local lease = term .. '\\n' .. ARGV[1] .. '\\n' .. ARGV[2]\n"
    "redis.call('SET', KEYS[1], lease, 'NX', 'PX', ARGV[3])\n"
    "redis.pcall('PUBLISH', ARGV[5], lease)\n"
    "return {1, lease}\n";

/* KEYS: lease, counter. ARGV: term, token, ttl ms, value, channel.
 * 1: extended. 0: gone (expired). -1 and the lease: someone else's.
 * After data loss (a lease of an older term or a tombstone of ours brought
 * back by a restart, or no key and a counter below our term) the lease is
 * put back as it was: no one can hold an older term than ours now. */
static const char renew_script[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "local mine = ARGV[1] .. '\\n' .. ARGV[2] .. '\\n'\n"
    "local term = tonumber(ARGV[1])\n"
    "local lost = false\n"
    "if cur then\n"
    "  if string.sub(cur, 1, #mine) == mine then\n"
    "    redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "    return 1\n"
    "  end\n"
    "  local t, holder = string.match(cur, '^(%d+)\\n([^\\n]*)\\n')\n"
    "  t = tonumber(t)\n"
    "  if not t or t > term or (t == term and holder ~= '') then return {-1, cur} end\n"
    "  lost = true\n"
    "else\n"
    "  lost = tonumber(redis.call('GET', KEYS[2]) or '0') < term\n"
    "end\n"
    "if not lost then return 0 end\n"
    "local count = tonumber(redis.call('GET', KEYS[2]) or '0')\n"
    "if count < term then redis.call('SET', KEYS[2], term) end\n"
    "redis.call('SET', KEYS[1], mine .. ARGV[4], 'PX', ARGV[3])\n"
    "redis.pcall('PUBLISH', ARGV[5], mine .. ARGV[4])\n"
    "return 1\n";

/* KEYS: lease. ARGV: token, channel. Deletes the lease only if ours. */
static const char release_script[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if not cur then return 0 end\n"
    "local _, holder = string.match(cur, '^(%d+)\\n([^\\n]*)\\n')\n"
    "if holder ~= ARGV[1] then return 0 end\n"
    "redis.call('DEL', KEYS[1])\n"
    "redis.pcall('PUBLISH', ARGV[2], '')\n"
    "return 1\n";

/* KEYS: lease. {} when vacant, else {lease, pttl}: one atomic read. */
static const char read_script[] = "local cur = redis.call('GET', KEYS[1])\n"
                                  "if not cur then return {} end\n"
                                  "return {cur, redis.call('PTTL', KEYS[1])}\n";

static const char *const scripts[NSCRIPTS] = {acquire_script, renew_script, release_script,
                                              read_script};

/* ---- types ---- */

typedef struct rstore rstore;
typedef struct rconn rconn;
typedef struct rkey rkey;
typedef struct relection relection;
typedef struct rreq rreq;

/* A lookup of the server's name; outlives a connection attempt cancelled
 * before evdns has said so. */
typedef struct rresolve {
    rconn *c; /* NULL once cancelled */
    int family;
    struct evdns_getaddrinfo_request *req;
} rresolve;

/* What to do with a reply; reply is NULL when the connection went away. */
typedef void reply_fn(rreq *req, redisReply *reply);

enum conn_state { CONN_DOWN, CONN_CONNECTING, CONN_HANDSHAKE, CONN_READY };

/* One connection: commands, or the subscriber. Its one timer is the
 * reconnect delay while down, the connect timeout while connecting, and
 * the oldest request's timeout while up: hiredis 0.14 has no timeouts of
 * its own in the async API. */
struct rconn {
    rstore *st;
    bool subscriber;
    redisAsyncContext *ac; /* NULL while down */
    rresolve *resolving;   /* the lookup of the host's name under way, or NULL */
    enum conn_state state;
    struct event *timer;
    double started;       /* when the current connect began */
    double backoff;       /* the next reconnect delay */
    bool retry_scheduled; /* the timer, while down, is a reconnect */
    rreq *head, *tail;    /* requests awaiting a reply, oldest first */
    unsigned handshake_left;
    bool confirmed;       /* subscriber: a SUBSCRIBE confirmed on this connection */
    unsigned unconfirmed; /* subscriber: connections in a row dropped before that */
};

/* Per key: names and the highest term seen, kept for the store's life so
 * the floor survives resigns. Subscriptions are kept as long, too: hiredis
 * 0.14's UNSUBSCRIBE bookkeeping is fragile and a channel costs little. */
struct rkey {
    char *key, *counter, *channel;
    uint64_t max_term;
    double released_at;     /* when one of ours last released it as leader */
    char release_token[17]; /* owed: to send on reconnect, or "" (one per key; */
                            /* another such lease just expires) */
    bool release_by_leader; /* the owed release gives up a leadership */
    bool subscribed;        /* SUBSCRIBE sent on the current subscriber connection */
    rkey *next;
};

struct rstore {
    char *host;
    int port;
    char *server;              /* "host:port", for messages */
    char *username, *password; /* never logged */
    int db;
    double timeout, poll;
    rconn cmd, sub;
    char sha[NSCRIPTS][41];
    relection *elections; /* attached ones, and detached ones with requests in flight */
    rkey *keys;
    unsigned outstanding; /* requests in flight on either connection */
    unsigned depth;       /* how many of our callbacks are on the stack */
    bool closing;
    struct event *reaper; /* frees the store outside any hiredis callback */
};

enum op { OP_NONE, OP_ACQUIRE, OP_RENEW, OP_READ };

struct relection {
    rstore *st;
    rkey *k;
    ls_election *e; /* NULL once cancelled or failed */
    relection *next, **pprev;
    char token[17];
    bool candidate, leader;
    enum op busy;  /* the request in flight, if any: one at a time */
    bool again;    /* something changed while busy: look again after */
    bool may_hold; /* an acquire was sent: cancel must release */
    uint64_t term; /* ours, while leader */
    double ttl;
    long long ttl_ms;
    double renew_period; /* ls_renew_period() of the election */
    double not_before;   /* no acquire before this: a resign lets others go first */
    struct event *timer; /* next renew, or next look */
    unsigned refs;       /* 1 while attached, plus one per request in flight */
};

struct rreq {
    rstore *st;
    rconn *conn; /* NULL once its connection dropped it */
    rreq *next;
    relection *re; /* NULL for the handshake */
    reply_fn *fn;
    double sent;       /* when it went: its timeout runs from here */
    double first_sent; /* when the first try went (before a NOSCRIPT retry): */
                       /* the lower bound of when the server ran it */
    int script;        /* which script, or -1 */
    int load;          /* for SCRIPT LOAD: which script, else -1 */
    bool holds_loop;
    rkey *release_key;      /* a release's key, else NULL */
    bool release_by_leader; /* the release gives up a leadership */
    int argc;               /* the EVALSHA command, kept for an EVAL retry */
    char **argv;
    size_t *argvlen;
};

static void conn_want(rconn *c);
static void conn_lost(rconn *c, const char *why);
static void step(relection *re);

/* ---- small helpers ---- */

static double min_d(double a, double b) { return a < b ? a : b; }

static void arm(struct event *ev, double seconds)
{
    if (seconds < 0)
        seconds = 0;
    struct timeval tv = {(time_t)seconds, (suseconds_t)((seconds - (time_t)seconds) * 1e6)};
    evtimer_add(ev, &tv);
}

static char *dup_printf(const char *fmt, const char *a, const char *b)
{
    size_t len = strlen(fmt) + strlen(a) + (b ? strlen(b) : 0) + 1;
    char *s = malloc(len);
    snprintf(s, len, fmt, a, b ? b : "");
    return s;
}

/* The holder token of election e: random per process, fixed per election
 * object, so a campaign after a dropped connection recognises a lease that
 * a command on the old connection wrote after we gave up on it, and takes
 * it over instead of waiting out its ttl. From the election's serial, not
 * its address: a new election at a freed one's address must not inherit
 * its lease (and its term). */
static void make_token(char out[17], ls_election *e)
{
    static uint64_t base;
    if (!base && getrandom(&base, sizeof base, GRND_NONBLOCK) != sizeof base)
        base = (uint64_t)(ls_now() * 1e9) ^ (uint64_t)getpid() << 32;
    /* odd multiplier: distinct elections stay distinct tokens */
    uint64_t r = base ^ (ls_election_view(e)->serial * 0x9e3779b97f4a7c15u);
    snprintf(out, 17, "%016" PRIx64, r);
}

/* A lease "<term>\n<token>\n<value>" split into its parts. False if the
 * string was not written by these scripts. */
typedef struct lease {
    uint64_t term;
    const char *token;
    size_t token_len;
    const char *value;
    size_t value_len;
} lease;

static bool parse_lease(const redisReply *r, lease *out)
{
    if (!r || r->type != REDIS_REPLY_STRING)
        return false;
    const char *s = r->str, *end = r->str + r->len;
    const char *nl = memchr(s, '\n', (size_t)(end - s));
    /* INCR stops at 2^63 - 1 (19 digits); 20 digits may not fit 64 bits */
    if (!nl || nl == s || nl - s > 19)
        return false;
    uint64_t term = 0;
    for (const char *p = s; p < nl; p++) {
        if (*p < '0' || *p > '9')
            return false;
        term = term * 10 + (uint64_t)(*p - '0');
    }
    const char *tok = nl + 1;
    const char *nl2 = memchr(tok, '\n', (size_t)(end - tok));
    if (!nl2)
        return false;
    out->term = term;
    out->token = tok;
    out->token_len = (size_t)(nl2 - tok);
    out->value = nl2 + 1;
    out->value_len = (size_t)(end - out->value);
    return true;
}

static const char *reply_type_name(int type)
{
    switch (type) {
    case REDIS_REPLY_STRING:
        return "string";
    case REDIS_REPLY_ARRAY:
        return "array";
    case REDIS_REPLY_INTEGER:
        return "integer";
    case REDIS_REPLY_NIL:
        return "nil";
    case REDIS_REPLY_STATUS:
        return "status";
    case REDIS_REPLY_ERROR:
        return "error";
    default:
        return "unknown";
    }
}

/* ---- keys ---- */

static rkey *key_get(rstore *st, const char *key)
{
    for (rkey *k = st->keys; k; k = k->next)
        if (!strcmp(k->key, key))
            return k;
    rkey *k = calloc(1, sizeof *k);
    k->key = strdup(key);
    k->counter = dup_printf("%s:term", key, NULL);
    k->channel = dup_printf("%s:events", key, NULL);
    k->next = st->keys;
    st->keys = k;
    return k;
}

static void key_saw(rkey *k, uint64_t term)
{
    if (term > k->max_term)
        k->max_term = term;
}

/* ---- elections: lifetime ---- */

static void election_unref(relection *re)
{
    if (--re->refs > 0)
        return;
    if (re->next)
        re->next->pprev = re->pprev;
    *re->pprev = re->next;
    event_free(re->timer);
    free(re);
}

/* Cuts re from its engine election: no report for it after this. */
static void detach(relection *re)
{
    if (!re->e)
        return;
    ls_election_view(re->e)->backend_data = NULL;
    re->e = NULL;
    evtimer_del(re->timer);
    election_unref(re);
}

/* Ends the attempt: the engine backs off and calls campaign/follow again. */
static void fail(relection *re, const char *message)
{
    ls_election *e = re->e;
    if (!e)
        return;
    re->leader = false;
    detach(re);
    ls_election_failed(e, message);
}

/* Calls fn on every attached election. Reports may stop, cancel or start
 * elections from inside fn, so work from a snapshot that holds a ref on
 * each. */
static void each_election(rstore *st, rkey *only, void (*fn)(relection *, const char *),
                          const char *arg)
{
    size_t n = 0;
    for (relection *re = st->elections; re; re = re->next)
        n += re->e && (!only || re->k == only);
    if (n == 0)
        return;
    relection **all = malloc(n * sizeof *all);
    size_t i = 0;
    for (relection *re = st->elections; re && i < n; re = re->next) {
        if (re->e && (!only || re->k == only)) {
            re->refs++;
            all[i++] = re;
        }
    }
    for (size_t j = 0; j < i; j++) {
        if (all[j]->e)
            fn(all[j], arg);
        election_unref(all[j]);
    }
    free(all);
}

static bool any_attached(rstore *st)
{
    for (relection *re = st->elections; re; re = re->next)
        if (re->e)
            return true;
    return false;
}

/* ---- requests ---- */

static void reap_soon(rstore *st)
{
    struct timeval zero = {0, 0};
    evtimer_add(st->reaper, &zero);
}

/* The request timer follows the oldest request in flight. */
static void conn_arm_request_timer(rconn *c)
{
    if (c->state != CONN_READY)
        return;
    if (!c->head)
        evtimer_del(c->timer);
    else
        arm(c->timer, c->head->sent + c->st->timeout - ls_now());
}

static void req_free(rreq *req)
{
    for (int i = 0; i < req->argc; i++)
        free(req->argv[i]);
    free(req->argv);
    free(req->argvlen);
    free(req);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Queues req on c. False (req untouched) if hiredis refuses: the
 * connection is on its way down. */
static bool req_send(rconn *c, rreq *req)
{
    if (c->state < CONN_HANDSHAKE || !c->ac)
        return false;
    if (redisAsyncCommandArgv(c->ac, on_reply, req, req->argc, (const char **)req->argv,
                              req->argvlen) != REDIS_OK)
        return false;
    req->conn = c;
    req->next = NULL;
    if (c->tail)
        c->tail->next = req;
    else
        c->head = req;
    c->tail = req;
    c->st->outstanding++;
    if (req->re)
        req->re->refs++;
    if (c->head == req)
        conn_arm_request_timer(c);
    return true;
}

static rreq *req_new(rstore *st, relection *re, reply_fn *fn, int argc)
{
    rreq *req = calloc(1, sizeof *req);
    req->st = st;
    req->re = re;
    req->fn = fn;
    req->script = -1;
    req->load = -1;
    req->sent = req->first_sent = ls_now();
    req->argc = argc;
    req->argv = calloc((size_t)argc, sizeof *req->argv);
    req->argvlen = calloc((size_t)argc, sizeof *req->argvlen);
    return req;
}

static void req_arg(rreq *req, int i, const char *s, size_t len)
{
    req->argv[i] = malloc(len + 1);
    memcpy(req->argv[i], s, len);
    req->argv[i][len] = '\0';
    req->argvlen[i] = len;
}

/* For argument lengths: the argument is a C string. */
#define CSTR ((size_t)-1)

/* Runs `script` by EVALSHA on the command connection with keys then args
 * (lens may be NULL, or CSTR for a C string). */
static bool send_script(relection *re, int script, reply_fn *fn, int nkeys, const char *const *args,
                        const size_t *lens, int nargs)
{
    rstore *st = re->st;
    rreq *req = req_new(st, re, fn, 3 + nargs);
    req->script = script;
    char numkeys[12];
    snprintf(numkeys, sizeof numkeys, "%d", nkeys);
    req_arg(req, 0, "EVALSHA", 7);
    req_arg(req, 1, st->sha[script], strlen(st->sha[script]));
    req_arg(req, 2, numkeys, strlen(numkeys));
    for (int i = 0; i < nargs; i++)
        req_arg(req, 3 + i, args[i], lens && lens[i] != CSTR ? lens[i] : strlen(args[i]));
    if (!req_send(&st->cmd, req)) {
        req_free(req);
        return false;
    }
    return true;
}

/* After NOSCRIPT (SCRIPT FLUSH, or a failover to a server that never saw
 * our SCRIPT LOAD) the same call goes again as EVAL, which also puts the
 * script back into the server's cache for the next EVALSHA. */
static bool retry_as_eval(rreq *req)
{
    rconn *c = &req->st->cmd;
    rreq *again = req_new(req->st, req->re, req->fn, req->argc);
    again->script = req->script;
    again->first_sent = req->first_sent;
    again->holds_loop = req->holds_loop;
    req_arg(again, 0, "EVAL", 4);
    req_arg(again, 1, scripts[req->script], strlen(scripts[req->script]));
    for (int i = 2; i < req->argc; i++)
        req_arg(again, i, req->argv[i], req->argvlen[i]);
    if (!req_send(c, again)) {
        req_free(again);
        return false;
    }
    req->holds_loop = false; /* handed over */
    return true;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    rreq *req = privdata;
    redisReply *r = reply;
    rconn *c = req->conn;
    rstore *st = req->st;
    st->depth++;
    if (c) {
        /* replies come in order, so this is the head; unlink defensively */
        rreq **p = &c->head;
        while (*p && *p != req)
            p = &(*p)->next;
        if (*p) {
            *p = req->next;
            if (c->tail == req) {
                c->tail = NULL;
                for (rreq *q = c->head; q; q = q->next)
                    c->tail = q;
            }
        }
        conn_arm_request_timer(c);
    }
    st->outstanding--;
    /* a cancelled acquire or renew is not retried: the release that
     * cancel sent after it must stay the last word */
    bool retry = r && r->type == REDIS_REPLY_ERROR && req->script >= 0 &&
                 !strncmp(r->str, "NOSCRIPT", 8) && c && !st->closing && req->re && req->re->e;
    if (!(retry && retry_as_eval(req)))
        req->fn(req, r);
    if (req->holds_loop)
        ls_loop_release();
    if (req->re)
        election_unref(req->re);
    req_free(req);
    st->depth--;
    if (st->closing && st->outstanding == 0)
        reap_soon(st);
}

/* ---- elections: the protocol ---- */

static void arm_look(relection *re, long long pttl_ms)
{
    double wait = re->st->poll;
    if (pttl_ms >= 0)
        wait = min_d(wait, (double)pttl_ms / 1000 + 0.002);
    arm(re->timer, wait);
}

/* Reports a lease read from the server as the leader (tombstone: vacancy). */
static void report_lease(relection *re, const lease *l)
{
    key_saw(re->k, l->term);
    if (l->token_len == 0)
        ls_election_leader(re->e, NULL, 0, 0);
    else
        ls_election_leader(re->e, l->value, l->value_len, l->term);
}

static void fail_reply(relection *re, const char *what, const redisReply *r)
{
    char msg[512];
    if (r->type == REDIS_REPLY_ERROR)
        snprintf(msg, sizeof msg, "redis %s: %s of '%s' failed: %.*s", re->st->server, what,
                 re->k->key, (int)r->len, r->str);
    else
        snprintf(msg, sizeof msg, "redis %s: unexpected %s reply to %s of '%s'", re->st->server,
                 reply_type_name(r->type), what, re->k->key);
    fail(re, msg);
}

static void fail_foreign(relection *re, const redisReply *lease_reply)
{
    char msg[512];
    snprintf(msg, sizeof msg,
             "redis %s: key '%s' holds a %s not written by leadership; remove it or pick "
             "another key",
             re->st->server, re->k->key,
             lease_reply ? reply_type_name(lease_reply->type) : "value");
    fail(re, msg);
}

static void acquire_reply(rreq *req, redisReply *r)
{
    relection *re = req->re;
    re->busy = OP_NONE;
    if (!re->e || !r)
        return; /* cancelled, or the connection is gone and says so itself */
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER) {
        fail_reply(re, "acquire", r);
        return;
    }
    lease l;
    if (!parse_lease(r->element[1], &l)) {
        fail_foreign(re, r->element[1]);
        return;
    }
    if (r->element[0]->integer == 1) {
        /* ours, from an acquire that ran after our release was refused:
         * that release, owed, would now delete a live lease */
        if (!strcmp(re->k->release_token, re->token))
            re->k->release_token[0] = '\0';
        key_saw(re->k, l.term);
        re->leader = true;
        re->term = l.term;
        re->again = false;
        arm(re->timer, req->first_sent + re->renew_period - ls_now());
        ls_election_acquired(re->e, l.term, req->first_sent);
        return;
    }
    long long pttl =
        r->elements > 2 && r->element[2]->type == REDIS_REPLY_INTEGER ? r->element[2]->integer : -1;
    re->may_hold = false; /* refused, and nothing else in flight */
    report_lease(re, &l);
    if (!re->e)
        return;
    if (re->again) {
        re->again = false;
        step(re);
    } else {
        arm_look(re, pttl);
    }
}

static void renew_reply(rreq *req, redisReply *r)
{
    relection *re = req->re;
    re->busy = OP_NONE;
    re->again = false; /* this renew already looked */
    if (!re->e || !r || !re->leader)
        return;
    if (r->type == REDIS_REPLY_INTEGER && r->integer == 1) {
        arm(re->timer, req->first_sent + re->renew_period - ls_now());
        ls_election_renewed(re->e, req->first_sent);
        return;
    }
    bool gone = r->type == REDIS_REPLY_INTEGER && r->integer == 0;
    bool taken = r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
                 r->element[0]->type == REDIS_REPLY_INTEGER && r->element[0]->integer == -1;
    if (!gone && !taken) {
        /* not a verdict on the lease: keep trying until the deadline */
        char msg[512];
        if (r->type == REDIS_REPLY_ERROR)
            snprintf(msg, sizeof msg, "redis %s: renew of '%s' failed: %.*s", re->st->server,
                     re->k->key, (int)r->len, r->str);
        else
            snprintf(msg, sizeof msg, "redis %s: unexpected %s reply to renew of '%s'",
                     re->st->server, reply_type_name(r->type), re->k->key);
        arm(re->timer, re->renew_period * 0.3);
        ls_election_error(re->e, msg);
        return;
    }
    re->leader = false;
    re->term = 0;
    ls_election_lost(re->e, gone ? "session" : "deleted");
    if (re->e)
        step(re); /* campaign on; the acquire reports who leads now */
}

static void read_reply(rreq *req, redisReply *r)
{
    relection *re = req->re;
    re->busy = OP_NONE;
    if (!re->e || !r)
        return;
    if (r->type != REDIS_REPLY_ARRAY || (r->elements != 0 && r->elements < 2)) {
        fail_reply(re, "read", r);
        return;
    }
    long long pttl = -1;
    if (r->elements == 0) {
        ls_election_leader(re->e, NULL, 0, 0);
    } else {
        lease l;
        if (!parse_lease(r->element[0], &l)) {
            fail_foreign(re, r->element[0]);
            return;
        }
        if (r->element[1]->type == REDIS_REPLY_INTEGER)
            pttl = r->element[1]->integer;
        report_lease(re, &l);
    }
    if (!re->e)
        return;
    if (re->again) {
        re->again = false;
        step(re);
    } else {
        arm_look(re, pttl);
    }
}

static void report_waiting(relection *re, const char *message)
{
    if (re->candidate && !re->leader)
        ls_election_error(re->e, message);
}

static void release_reply(rreq *req, redisReply *r)
{
    rstore *st = req->st;
    rkey *k = req->release_key;
    if (r && r->type != REDIS_REPLY_ERROR)
        return;
    if (r)
        ls_log_event(LS_WARN, "redis release failed", "key", k->key, "error", r->str, NULL);
    if (st->closing)
        return;
    /* The connection went first, or the server turned it down (BUSY with
     * a slow script, MISCONF, OOM): our next acquire would find our lease
     * and keep it (a resign undone). Owed again, it goes before our next
     * acquire of k, on this connection or the next. If a lost one did run,
     * running it again deletes at most a lease no reply told us of: every
     * later request on that connection lost its reply too. */
    if (!k->release_token[0]) {
        snprintf(k->release_token, sizeof k->release_token, "%s", req->argv[4]);
        k->release_by_leader = req->release_by_leader;
    }
    if (r) {
        /* our candidates of k wait for it: say why */
        char msg[512];
        snprintf(msg, sizeof msg, "redis %s: release of '%s' failed: %.*s", st->server, k->key,
                 (int)r->len, r->str);
        each_election(st, k, report_waiting, msg);
    }
}

/* Deletes k if token still holds it. True if sent. By EVAL, not EVALSHA:
 * a release retried after NOSCRIPT would go behind requests sent since,
 * such as our own next acquire (same token), and delete the new lease. */
static bool send_release(rstore *st, rkey *k, const char *token, bool by_leader, bool hold_loop)
{
    const char *args[] = {k->key, token, k->channel};
    rreq *req = req_new(st, NULL, release_reply, 3 + 3);
    req->script = SCRIPT_RELEASE;
    req->release_key = k;
    req->release_by_leader = by_leader;
    req_arg(req, 0, "EVAL", 4);
    req_arg(req, 1, release_script, strlen(release_script));
    req_arg(req, 2, "1", 1);
    for (int i = 0; i < 3; i++)
        req_arg(req, 3 + i, args[i], strlen(args[i]));
    if (!req_send(&st->cmd, req)) {
        req_free(req);
        return false;
    }
    if (hold_loop) {
        req->holds_loop = true;
        ls_loop_hold();
    }
    return true;
}

/* When re may acquire after one of ours released its key as leader. */
static double after_release(const relection *re)
{
    return re->k->released_at + min_d(re->ttl / 4, 0.2);
}

/* One of ours just gave up k as leader (a resign): our candidates for k
 * wait a moment, so the others, who hear of it by pub/sub, go first. */
static void released_by_leader(rstore *st, rkey *k)
{
    k->released_at = ls_now();
    for (relection *re = st->elections; re; re = re->next)
        if (re->k == k && re->candidate && re->e)
            re->not_before = after_release(re);
}

/* Sends k's owed release, if any: it must run before any acquire of k. */
static void send_owed_release(rstore *st, rkey *k)
{
    if (!k->release_token[0])
        return;
    /* not behind an acquire with its token: that one may win, and this
     * would delete the lease it reports (if it wins, nothing is owed) */
    for (relection *re = st->elections; re; re = re->next)
        if (re->k == k && re->busy == OP_ACQUIRE && !strcmp(re->token, k->release_token))
            return;
    if (send_release(st, k, k->release_token, k->release_by_leader, false)) {
        k->release_token[0] = '\0';
        if (k->release_by_leader)
            released_by_leader(st, k);
    }
}

static void send_acquire(relection *re)
{
    struct ls_election_view *v = ls_election_view(re->e);
    char ttl[24], floor[24];
    snprintf(ttl, sizeof ttl, "%lld", re->ttl_ms);
    snprintf(floor, sizeof floor, "%" PRIu64, re->k->max_term);
    const char *args[] = {re->k->key, re->k->counter, re->token,     v->value,
                          ttl,        floor,          re->k->channel};
    const size_t lens[] = {CSTR, CSTR, CSTR, v->value_len, CSTR, CSTR, CSTR};
    if (send_script(re, SCRIPT_ACQUIRE, acquire_reply, 2, args, lens, 7)) {
        re->busy = OP_ACQUIRE;
        re->may_hold = true;
    }
}

static void send_renew(relection *re)
{
    struct ls_election_view *v = ls_election_view(re->e);
    char ttl[24], term[24];
    snprintf(ttl, sizeof ttl, "%lld", re->ttl_ms);
    snprintf(term, sizeof term, "%" PRIu64, re->term);
    const char *args[] = {re->k->key, re->k->counter, term,          re->token,
                          ttl,        v->value,       re->k->channel};
    const size_t lens[] = {CSTR, CSTR, CSTR, CSTR, CSTR, v->value_len, CSTR};
    if (send_script(re, SCRIPT_RENEW, renew_reply, 2, args, lens, 7))
        re->busy = OP_RENEW;
}

static void send_read(relection *re)
{
    const char *args[] = {re->k->key};
    if (send_script(re, SCRIPT_READ, read_reply, 1, args, NULL, 1))
        re->busy = OP_READ;
}

/* Does the next thing for re: renew if leading, else try to acquire
 * (candidates) or read (followers). Waits for the connection if down. */
static void step(relection *re)
{
    if (!re->e)
        return;
    if (re->busy) {
        re->again = true;
        return;
    }
    rconn *c = &re->st->cmd;
    if (c->state != CONN_READY) {
        conn_want(c);
        return;
    }
    if (re->candidate && !re->leader)
        send_owed_release(re->st, re->k);
    double now = ls_now();
    if (re->candidate && !re->leader && now < re->not_before) {
        arm(re->timer, re->not_before - now);
        return;
    }
    evtimer_del(re->timer);
    if (re->leader)
        send_renew(re);
    else if (re->candidate)
        send_acquire(re);
    else
        send_read(re);
}

static void election_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    relection *re = arg;
    rstore *st = re->st;
    st->depth++;
    step(re);
    st->depth--;
}

static void step_cb(relection *re, const char *unused) { step(re); }

/* ---- connections ---- */

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg);

static void conn_init(rconn *c, rstore *st, bool subscriber)
{
    c->st = st;
    c->subscriber = subscriber;
    c->timer = evtimer_new(ls_loop_base(), conn_timer_cb, c);
    c->backoff = 0.1;
}

/* Tears the connection down (no reports, no reconnect). Requests in
 * flight get their callbacks with a NULL reply, now or when hiredis
 * leaves the callback it is in. */
static void conn_drop(rconn *c)
{
    if (c->resolving) {
        c->resolving->c = NULL; /* resolved() frees it when told of the cancel */
        evdns_getaddrinfo_cancel(c->resolving->req);
        c->resolving = NULL;
    }
    redisAsyncContext *ac = c->ac;
    c->ac = NULL;
    c->state = CONN_DOWN;
    c->retry_scheduled = false;
    evtimer_del(c->timer);
    for (rreq *q = c->head; q; q = q->next)
        q->conn = NULL;
    c->head = c->tail = NULL;
    if (c->subscriber)
        for (rkey *k = c->st->keys; k; k = k->next)
            k->subscribed = false;
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac);
    }
}

static bool conn_needed(rconn *c) { return !c->st->closing && any_attached(c->st); }

/* Makes sure c is up or on its way up, if anyone needs it. */
static void conn_want(rconn *c)
{
    if (c->state != CONN_DOWN || c->retry_scheduled || !conn_needed(c))
        return;
    /* connect from the loop, never inside campaign/follow: a synchronous
     * failure would report into the engine while it calls us */
    c->retry_scheduled = true;
    arm(c->timer, 0);
}

static void report_loss(relection *re, const char *message)
{
    if (re->leader)
        ls_election_error(re->e, message); /* renewals go on; the deadline decides */
    else
        fail(re, message);
}

static void report_fatal(relection *re, const char *message) { fail(re, message); }

static void report_error(relection *re, const char *message)
{
    if (re->e)
        ls_election_error(re->e, message);
}

/* The subscriber lost again before any SUBSCRIBE was confirmed: the server
 * turns our subscriptions down (an ACL user without channel rights) or
 * drops us for them. Elections poll without it; it is told once, and
 * asked again at most every 30 s instead of every second. */
static double subscriber_refused(rconn *c, const char *why)
{
    rstore *st = c->st;
    if (++c->unconfirmed == 2) {
        char msg[600];
        snprintf(msg, sizeof msg,
                 "redis %s: the pub/sub connection is dropped before any SUBSCRIBE is "
                 "confirmed (%s); changes are noticed by polling every %gs instead (does "
                 "the user have channel rights, '&*'?)",
                 st->server, why, st->poll);
        each_election(st, NULL, report_error, msg);
    }
    return c->unconfirmed >= 2 ? 30.0 : 1.0;
}

/* The connection broke, or never came up. Leaders hear an error and keep
 * their lease until the local deadline; everyone else fails the attempt
 * and comes back through the engine's retry policy. */
static void conn_lost(rconn *c, const char *why)
{
    rstore *st = c->st;
    bool was_ready = c->state == CONN_READY;
    bool refused = c->subscriber && was_ready && !c->confirmed;
    conn_drop(c);
    if (st->closing)
        return;
    double delay = c->backoff * (0.8 + 0.4 * (double)random() / RAND_MAX);
    c->backoff = min_d(c->backoff * 2, refused ? subscriber_refused(c, why) : 1.0);
    ls_log_event(was_ready ? LS_WARN : LS_INFO, "redis connection lost", "server", st->server,
                 "connection", c->subscriber ? "pub/sub" : "commands", "error", why, NULL);
    if (c->subscriber) {
        /* the command connection carries the reports; we only resubscribe */
        if (conn_needed(c)) {
            c->retry_scheduled = true;
            arm(c->timer, delay);
        }
        return;
    }
    char msg[512];
    snprintf(msg, sizeof msg, "redis %s: %s", st->server, why);
    /* a server that stopped answering commands is not trusted with pub/sub */
    if (st->sub.state != CONN_DOWN)
        conn_drop(&st->sub);
    each_election(st, NULL, report_loss, msg);
    if (conn_needed(c) && c->state == CONN_DOWN && !c->retry_scheduled) {
        c->retry_scheduled = true;
        arm(c->timer, delay);
    }
    conn_want(&st->sub);
}

/* A refusal no retry will fix (AUTH, SELECT, scripting disabled): every
 * election fails with it; the engine's retry policy decides what next. */
static void conn_fatal(rconn *c, const char *message)
{
    rstore *st = c->st;
    ls_log_event(LS_ERROR, "redis refused", "server", st->server, "error", message, NULL);
    conn_drop(&st->cmd);
    conn_drop(&st->sub);
    each_election(st, NULL, report_fatal, message);
}

static void subscribe(rstore *st, rkey *k);

static void conn_ready(rconn *c)
{
    rstore *st = c->st;
    c->state = CONN_READY;
    c->confirmed = false;
    /* the subscriber, without AUTH, is ready before the server has said a
     * word: its delay restarts with the first SUBSCRIBE confirmed, or a
     * server that drops it at once would see it every 0.1 s for ever */
    if (!c->subscriber)
        c->backoff = 0.1;
    evtimer_del(c->timer);
    conn_arm_request_timer(c);
    ls_log_event(LS_DEBUG, "redis connected", "server", st->server, "connection",
                 c->subscriber ? "pub/sub" : "commands", NULL);
    if (c->subscriber) {
        for (rkey *k = st->keys; k; k = k->next)
            subscribe(st, k);
    } else {
        /* owed releases first: they must run before any new acquire */
        for (rkey *k = st->keys; k; k = k->next)
            send_owed_release(st, k);
        each_election(st, NULL, step_cb, NULL);
    }
}

/* Refusals a server gives while busy or full, not about us: a reconnect
 * that meets one is a connection lost (leaders keep their lease until the
 * deadline), not a refusal no retry will fix. */
static bool refusal_passes(const char *error)
{
    static const char *const passing[] = {"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "OOM",
                                          "MISCONF", "ERR max number of clients"};
    for (size_t i = 0; i < sizeof passing / sizeof *passing; i++)
        if (!strncmp(error, passing[i], strlen(passing[i])))
            return true;
    return false;
}

static void handshake_reply(rreq *req, redisReply *r)
{
    rconn *c = req->conn;
    if (!c || !r)
        return;
    rstore *st = c->st;
    const char *cmd = req->argv[0];
    if (r->type == REDIS_REPLY_ERROR) {
        char msg[600];
        if (refusal_passes(r->str)) {
            snprintf(msg, sizeof msg, "%s refused for now: %s", cmd, r->str);
            conn_lost(c, msg);
            return;
        }
        if (!strcmp(cmd, "AUTH"))
            snprintf(msg, sizeof msg, "redis %s: AUTH failed: %s (check the password%s)",
                     st->server, r->str, st->username ? " and user name" : "");
        else if (!strncmp(r->str, "NOAUTH", 6))
            snprintf(msg, sizeof msg,
                     "redis %s: the server requires AUTH (NOAUTH): give a password as "
                     "redis://:PASSWORD@host:port or the option auth.password",
                     st->server);
        else
            snprintf(msg, sizeof msg, "redis %s: %s failed: %s", st->server, cmd, r->str);
        conn_fatal(c, msg);
        return;
    }
    if (req->load >= 0) {
        if (r->type != REDIS_REPLY_STRING || r->len != 40) {
            char msg[300];
            snprintf(msg, sizeof msg, "redis %s: unexpected %s reply to SCRIPT LOAD", st->server,
                     reply_type_name(r->type));
            conn_fatal(c, msg);
            return;
        }
        memcpy(st->sha[req->load], r->str, 40);
        st->sha[req->load][40] = '\0';
    }
    if (--c->handshake_left == 0)
        conn_ready(c);
}

static void handshake_send(rconn *c, rreq *req)
{
    if (req_send(c, req))
        c->handshake_left++;
    else
        req_free(req);
}

static void connected(redisAsyncContext *ac, rconn *c, int status);

static void on_connect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    rconn *c = ac->data;
    if (!c)
        return;
    rstore *st = c->st;
    st->depth++;
    connected(ac, c, status);
    st->depth--;
}

static void connected(redisAsyncContext *ac, rconn *c, int status)
{
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback */
        ac->data = NULL;
        c->ac = NULL;
        char why[300];
        snprintf(why, sizeof why, "cannot connect: %s", ac->errstr);
        conn_lost(c, why);
        return;
    }
    rstore *st = c->st;
    /* a peer that vanished without a FIN is noticed on the subscriber too */
    redisEnableKeepAlive(&ac->c);
    c->state = CONN_HANDSHAKE;
    c->handshake_left = 0;
    if (st->password) {
        rreq *req = req_new(st, NULL, handshake_reply, st->username ? 3 : 2);
        req_arg(req, 0, "AUTH", 4);
        if (st->username)
            req_arg(req, 1, st->username, strlen(st->username));
        req_arg(req, req->argc - 1, st->password, strlen(st->password));
        handshake_send(c, req);
    }
    if (!c->subscriber) {
        if (st->db) {
            char db[12];
            snprintf(db, sizeof db, "%d", st->db);
            rreq *req = req_new(st, NULL, handshake_reply, 2);
            req_arg(req, 0, "SELECT", 6);
            req_arg(req, 1, db, strlen(db));
            handshake_send(c, req);
        }
        for (int i = 0; i < NSCRIPTS; i++) {
            if (i == SCRIPT_RELEASE)
                continue; /* always sent by EVAL */
            rreq *req = req_new(st, NULL, handshake_reply, 3);
            req->load = i;
            req_arg(req, 0, "SCRIPT", 6);
            req_arg(req, 1, "LOAD", 4);
            req_arg(req, 2, scripts[i], strlen(scripts[i]));
            handshake_send(c, req);
        }
    }
    /* the handshake shares the connect timeout */
    arm(c->timer, c->started + st->timeout - ls_now());
    if (c->handshake_left == 0)
        conn_ready(c);
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    rconn *c = ac->data;
    if (!c)
        return; /* we dropped it ourselves */
    ac->data = NULL;
    c->ac = NULL;
    char why[300];
    if (status == REDIS_OK || !ac->errstr[0])
        snprintf(why, sizeof why, "connection closed by the server");
    else
        snprintf(why, sizeof why, "connection lost: %s", ac->errstr);
    rstore *st = c->st;
    st->depth++;
    conn_lost(c, why);
    st->depth--;
}

/* ---- what hiredis is given ---- */

/* hiredis 0.14 trusts the server. A reply nobody asked for aborts the
 * process (assert) on a command connection; on a subscribed one a push
 * it cannot route runs the last finished callback again, with its freed
 * data, and a short push fails an assert; an array's announced length is
 * allocated before any element arrives (`*299999999`: 2.4 GB), and a bulk
 * string is buffered whole however long it says it is. So each
 * connection reads through a watcher of ours instead of hiredis's
 * libevent adapter: every byte read is parsed first by a reader of our
 * own, and a connection whose server sent any of that is dropped as lost
 * before hiredis sees a byte of it. */
#define MAX_REPLY_ELEMENTS 4096 /* our scripts reply with a handful */
#define MAX_REPLY_MB 16         /* a lease holds one candidate's value */
#define MAX_LINE (64 << 10)     /* a status, error, number or length line */

typedef struct rwatch {
    redisAsyncContext *ac;
    struct event *readable, *writable; /* one-shot, as hiredis expects */
    redisReader *screen;               /* fed the same bytes as hiredis's reader, first */
    /* the reply screen is reading: its array elements and string bytes so
     * far, whatever its nesting; the limit it broke, if any */
    size_t reply_elements, reply_bytes;
    char refused[100];
} rwatch;

/* Runs the callbacks of the replies in ac's reader: what
 * redisAsyncHandleRead does after its read. libhiredis exports it (0.14
 * and 1.x) but declares it in no header. */
void redisProcessCallbacks(redisAsyncContext *ac);

static redisReplyObjectFunctions bounded_functions;
static void *(*create_array)(const redisReadTask *, int);
static void *(*create_string)(const redisReadTask *, char *, size_t);

/* What screen's reader allocates for a reply counts towards its limits:
 * an array past them is NULL, and the reader stops with an error. */
static void *create_bounded_array(const redisReadTask *task, int elements)
{
    rwatch *w = task->privdata;
    w->reply_elements += (size_t)elements;
    if (w->reply_elements > MAX_REPLY_ELEMENTS) {
        snprintf(w->refused, sizeof w->refused,
                 "a reply of more than %d elements (an array of %d in it)", MAX_REPLY_ELEMENTS,
                 elements);
        return NULL;
    }
    return create_array(task, elements);
}

/* screen checks the sum, with what is buffered, after each read */
static void *create_counted_string(const redisReadTask *task, char *str, size_t len)
{
    ((rwatch *)task->privdata)->reply_bytes += len;
    return create_string(task, str, len);
}

static redisReader *screen_reader_new(rwatch *w)
{
    redisReader *rd = redisReaderCreate();
    if (!create_array) {
        bounded_functions = *rd->fn;
        create_array = bounded_functions.createArray;
        create_string = bounded_functions.createString;
        bounded_functions.createArray = create_bounded_array;
        bounded_functions.createString = create_counted_string;
    }
    rd->fn = &bounded_functions;
    rd->privdata = w;
    return rd;
}

/* The key whose channel a pub/sub push names: a "message" or "subscribe"
 * with a third element. NULL for any other reply. */
static rkey *push_key(const rstore *st, const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING)
        return NULL;
    if (strcmp(r->element[0]->str, "message") && strcmp(r->element[0]->str, "subscribe"))
        return NULL;
    for (rkey *k = st->keys; k; k = k->next)
        if (strlen(k->channel) == r->element[1]->len &&
            !memcmp(k->channel, r->element[1]->str, r->element[1]->len))
            return k;
    return NULL;
}

/* A push we let hiredis route to sub_reply (a part of what it would): one
 * on a channel SUBSCRIBEd on this connection. */
static bool routable_push(const rstore *st, const redisReply *r)
{
    const rkey *k = push_key(st, r);
    return k && k->subscribed;
}

static unsigned replies_owed(const redisAsyncContext *ac)
{
    unsigned n = 0;
    for (const redisCallback *cb = ac->replies.head; cb; cb = cb->next)
        n++;
    return n;
}

/* Parses buf, just read on c, as hiredis will: false, with why, if
 * hiredis must not be given all of it; *good is how much of it may go
 * (the replies before the first bad one). */
static bool screen(rwatch *w, rconn *c, const char *buf, size_t len, size_t *good, char *why,
                   size_t whylen)
{
    redisReader *rd = w->screen;
    unsigned owed = replies_owed(w->ac);
    bool subscribed = w->ac->c.flags & REDIS_SUBSCRIBED;
    redisReaderFeed(rd, buf, len);
    *good = 0;
    void *reply;
    while (redisReaderGetReply(rd, &reply) == REDIS_OK && reply) {
        redisReply *r = reply;
        bool answer = owed > 0;
        bool push = !answer && subscribed && routable_push(c->st, r);
        /* An error nobody asked for is the server's last word (max
         * clients reached) before it hangs up, as hiredis takes it. Any
         * other reply is garbage, even one hiredis would take for the
         * answer to a command sent while it runs this read's callbacks:
         * the server had not seen that command. */
        if (!answer && !push && r->type == REDIS_REPLY_ERROR)
            snprintf(why, whylen, "connection lost: %s", r->str);
        else if (!answer && !push)
            snprintf(why, whylen, "garbage from the server: a reply %s (%s)",
                     subscribed ? "that is no message on a channel subscribed to"
                                : "nobody asked for",
                     reply_type_name(r->type));
        freeReplyObject(r);
        w->reply_elements = w->reply_bytes = 0;
        if (!answer && !push)
            return false;
        /* what is left unread is the end of buf (the reader may have let go
         * of what it read) */
        *good = len - (rd->len - rd->pos);
        owed -= answer;
    }
    if (w->refused[0]) {
        snprintf(why, whylen, "garbage from the server: %s", w->refused);
        return false;
    }
    if (rd->err) {
        snprintf(why, whylen, "garbage from the server: %s", rd->errstr);
        return false;
    }
    /* hiredis looks for a line's end from its start again at each read:
     * a line of megabytes would cost seconds of both readers' time */
    size_t unread = rd->len - rd->pos;
    if (unread > MAX_LINE && !memmem(rd->buf + rd->pos, MAX_LINE, "\r\n", 2)) {
        snprintf(why, whylen, "garbage from the server: a line over %d KB", MAX_LINE >> 10);
        return false;
    }
    /* a string still arriving: what is buffered of it counts too */
    if (w->reply_bytes + unread > (size_t)MAX_REPLY_MB << 20) {
        snprintf(why, whylen, "garbage from the server: a reply over %d MB", MAX_REPLY_MB);
        return false;
    }
    *good = len;
    return true;
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    rwatch *w = arg;
    redisAsyncContext *ac = w->ac;
    if (!(ac->c.flags & REDIS_CONNECTED)) {
        /* the connect ends as on a write: hiredis then asks for reads */
        redisAsyncHandleWrite(ac);
        return;
    }
    char buf[16 * 1024];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        event_add(w->readable, NULL);
        return;
    }
    if (n == 0) {
        /* hiredis reads the end itself and disconnects */
        redisAsyncHandleRead(ac);
        return;
    }
    rconn *c = ac->data;
    rstore *st = c->st;
    char why[200];
    if (n < 0) {
        snprintf(why, sizeof why, "connection lost: %s", strerror(errno));
        st->depth++;
        conn_lost(c, why);
        st->depth--;
        return;
    }
    size_t good;
    bool sound = screen(w, c, buf, (size_t)n, &good, why, sizeof why);
    st->depth++;
    if (good > 0) {
        redisReaderFeed(ac->c.reader, buf, good);
        event_add(w->readable, NULL);
        redisProcessCallbacks(ac); /* may drop the connection: c->ac is then NULL */
    }
    if (!sound && c->ac)
        conn_lost(c, why); /* frees ac and w */
    st->depth--;
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    redisAsyncHandleWrite(((rwatch *)arg)->ac);
}

static void watch_add_read(void *w) { event_add(((rwatch *)w)->readable, NULL); }
static void watch_del_read(void *w) { event_del(((rwatch *)w)->readable); }
static void watch_add_write(void *w) { event_add(((rwatch *)w)->writable, NULL); }
static void watch_del_write(void *w) { event_del(((rwatch *)w)->writable); }

static void watch_cleanup(void *arg)
{
    rwatch *w = arg;
    event_free(w->readable);
    event_free(w->writable);
    redisReaderFree(w->screen);
    free(w);
}

/* In place of redisLibeventAttach: the same events, reads screened. */
static void watch(redisAsyncContext *ac)
{
    rwatch *w = calloc(1, sizeof *w);
    w->ac = ac;
    w->readable = event_new(ls_loop_base(), ac->c.fd, EV_READ, on_readable, w);
    w->writable = event_new(ls_loop_base(), ac->c.fd, EV_WRITE, on_writable, w);
    w->screen = screen_reader_new(w);
    ac->ev.data = w;
    ac->ev.addRead = watch_add_read;
    ac->ev.delRead = watch_del_read;
    ac->ev.addWrite = watch_add_write;
    ac->ev.delWrite = watch_del_write;
    ac->ev.cleanup = watch_cleanup;
    event_add(w->readable, NULL);
    event_add(w->writable, NULL);
}

/* Connects c to ip, a numeric address: hiredis resolves nothing. */
static void conn_open(rconn *c, const char *ip)
{
    rstore *st = c->st;
    redisAsyncContext *ac = redisAsyncConnect(ip, st->port);
    if (!ac || ac->err) {
        char why[300];
        snprintf(why, sizeof why, "cannot connect: %s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        conn_lost(c, why);
        return;
    }
    ac->data = c;
    watch(ac);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ac = ac;
}

static void resolve(rconn *c, int family);

static void resolved(int result, struct evutil_addrinfo *found, void *arg)
{
    rresolve *r = arg;
    rconn *c = r->c;
    int family = r->family;
    free(r);
    char ip[INET6_ADDRSTRLEN] = "";
    if (result == 0 && found) {
        const void *addr = found->ai_family == AF_INET6
                               ? (const void *)&((struct sockaddr_in6 *)found->ai_addr)->sin6_addr
                               : (const void *)&((struct sockaddr_in *)found->ai_addr)->sin_addr;
        inet_ntop(found->ai_family, addr, ip, sizeof ip);
    }
    if (found)
        evutil_freeaddrinfo(found);
    if (!c) /* cancelled: the connection attempt ended without it */
        return;
    c->resolving = NULL;
    rstore *st = c->st;
    st->depth++;
    if (!conn_needed(c)) {
        conn_drop(c); /* the store closed meanwhile */
    } else if (!ip[0] && family == AF_INET &&
               (result == EVUTIL_EAI_NONAME || result == EVUTIL_EAI_NODATA)) {
        resolve(c, AF_INET6);
    } else if (ip[0]) {
        conn_open(c, ip);
    } else {
        char why[300];
        snprintf(why, sizeof why, "cannot resolve '%s': %s", st->host,
                 result ? evutil_gai_strerror(result) : "no address");
        conn_lost(c, why);
    }
    st->depth--;
}

/* Looks the host's name up in one family: IPv4 first, then IPv6 if it
 * has no IPv4 address, as hiredis's own lookup does (both at once would
 * wait for the slower answer: up to 3 s where AAAA queries go unanswered). */
static void resolve(rconn *c, int family)
{
    struct evdns_base *dns = ls_loop_dns();
    evdns_base_clear_host_addresses(dns);
    evdns_base_load_hosts(dns, "/etc/hosts");
    rresolve *r = calloc(1, sizeof *r);
    r->c = c;
    r->family = family;
    c->resolving = r;
    struct evutil_addrinfo hints = {.ai_family = family, .ai_socktype = SOCK_STREAM};
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(dns, c->st->host, NULL, &hints, resolved, r);
    if (req) /* else answered already, and r freed (from /etc/hosts, say) */
        r->req = req;
}

/* A name goes to the loop's resolver first: hiredis would look it up
 * with a blocking getaddrinfo, and the loop, with every deadline on it,
 * would wait as long as a DNS server that does not answer. /etc/hosts
 * is read again each time, as getaddrinfo does. The connect timeout
 * covers the lookup. */
static void conn_connect(rconn *c)
{
    rstore *st = c->st;
    c->retry_scheduled = false;
    c->state = CONN_CONNECTING;
    c->started = ls_now();
    arm(c->timer, st->timeout);
    unsigned char addr[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, st->host, addr) == 1 || inet_pton(AF_INET6, st->host, addr) == 1)
        conn_open(c, st->host);
    else
        resolve(c, AF_INET);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    rconn *c = arg;
    rstore *st = c->st;
    char why[100];
    st->depth++;
    switch (c->state) {
    case CONN_DOWN:
        if (c->retry_scheduled && conn_needed(c))
            conn_connect(c);
        else
            c->retry_scheduled = false;
        break;
    case CONN_CONNECTING:
    case CONN_HANDSHAKE:
        if (c->resolving)
            snprintf(why, sizeof why, "no address for '%.40s' within %gs (DNS)", st->host,
                     st->timeout);
        else
            snprintf(why, sizeof why, "no connection within %gs", st->timeout);
        conn_lost(c, why);
        break;
    case CONN_READY:
        if (c->head && ls_now() >= c->head->sent + c->st->timeout) {
            snprintf(why, sizeof why, "no reply within %gs", c->st->timeout);
            conn_lost(c, why);
        } else {
            conn_arm_request_timer(c);
        }
        break;
    }
    st->depth--;
}

/* ---- pub/sub ---- */

static void sub_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    rstore *st = privdata;
    redisReply *r = reply;
    if (!r || !ac->data || st->closing)
        return;
    /* the key the push is for (screen lets no other push through) */
    rkey *k = push_key(st, r);
    if (!k)
        return;
    if (!strcmp(r->element[0]->str, "subscribe")) {
        st->sub.backoff = 0.1;
        st->sub.confirmed = true;
        st->sub.unconfirmed = 0;
    }
    /* a change, or a (re)subscription that may have missed some: look
     * again */
    st->depth++;
    each_election(st, k, step_cb, NULL);
    st->depth--;
}

static void subscribe(rstore *st, rkey *k)
{
    rconn *c = &st->sub;
    if (k->subscribed || c->state != CONN_READY)
        return;
    const char *argv[] = {"SUBSCRIBE", k->channel};
    if (redisAsyncCommandArgv(c->ac, sub_reply, st, 2, argv, NULL) == REDIS_OK)
        k->subscribed = true;
}

/* ---- the vtable ---- */

static void attach(ls_store *store, ls_election *e)
{
    rstore *st = store->impl;
    struct ls_election_view *v = ls_election_view(e);
    relection *re = calloc(1, sizeof *re);
    re->st = st;
    re->k = key_get(st, v->key);
    re->e = e;
    re->refs = 1;
    re->candidate = v->candidate;
    re->ttl = v->ttl;
    re->ttl_ms = (long long)ceil(v->ttl * 1000); /* never shorter than the ttl */
    re->renew_period = ls_renew_period(v);
    make_token(re->token, e);
    /* Right after we released the key (a resign), our own acquire would
     * beat the other candidates, who only hear of it by pub/sub. */
    if (re->candidate && re->k->released_at > 0)
        re->not_before = after_release(re);
    re->timer = evtimer_new(ls_loop_base(), election_timer_cb, re);
    re->next = st->elections;
    if (re->next)
        re->next->pprev = &re->next;
    re->pprev = &st->elections;
    st->elections = re;
    v->backend_data = re;
    subscribe(st, re->k);
    conn_want(&st->sub);
    if (st->cmd.state == CONN_READY)
        arm(re->timer, 0); /* from the loop, not from inside campaign/follow */
    else
        conn_want(&st->cmd); /* conn_ready steps it */
}

static void redis_campaign(ls_store *store, ls_election *e) { attach(store, e); }

static void redis_follow(ls_store *store, ls_election *e) { attach(store, e); }

static void redis_cancel(ls_store *store, ls_election *e)
{
    relection *re = ls_election_view(e)->backend_data;
    if (!re)
        return;
    rstore *st = re->st;
    if (re->may_hold) {
        /* sent after any acquire in flight, so it runs after it; with the
         * connection down, it goes first when it is back, before any
         * acquire (the token outlives this attempt: see make_token) */
        if (st->cmd.state == CONN_READY && send_release(st, re->k, re->token, re->leader, true)) {
            if (re->leader)
                re->k->released_at = ls_now();
        } else {
            memcpy(re->k->release_token, re->token, sizeof re->token);
            re->k->release_by_leader = re->leader;
        }
    }
    re->leader = false;
    detach(re);
}

static void reaper_cb(evutil_socket_t fd, short what, void *arg)
{
    rstore *st = arg;
    conn_drop(&st->cmd);
    conn_drop(&st->sub);
    /* the NULL replies have run: only idle, detached elections are left,
     * and there are none, as each was freed with its last request */
    while (st->elections) {
        relection *re = st->elections;
        st->elections = re->next;
        event_free(re->timer);
        free(re);
    }
    while (st->keys) {
        rkey *k = st->keys;
        st->keys = k->next;
        free(k->key);
        free(k->counter);
        free(k->channel);
        free(k);
    }
    event_free(st->cmd.timer);
    event_free(st->sub.timer);
    event_free(st->reaper);
    free(st->host);
    free(st->server);
    free(st->username);
    free(st->password);
    free(st);
    ls_loop_release();
}

static void redis_close(ls_store *store)
{
    rstore *st = store->impl;
    store->impl = NULL;
    st->closing = true;
    ls_loop_hold();
    if (st->outstanding == 0 && st->depth == 0)
        reaper_cb(-1, 0, st); /* at once: the loop may never run again (exit) */
    else if (st->outstanding == 0)
        reap_soon(st); /* inside our own callback: free once it has returned */
    else
        arm(st->reaper, st->timeout); /* releases in flight get this long */
}

static int redis_open(ls_store *store, const ls_store_config *cfg, char *err, size_t errlen)
{
    static const char *const known[] = {"auth.username", "auth.password", "db", "poll_interval",
                                        NULL};
    for (size_t i = 0; i < cfg->noptions; i++) {
        if (!strncmp(cfg->options[i].name, "tls.", 4) || !strcmp(cfg->options[i].name, "tls")) {
            snprintf(err, errlen,
                     "redis store: TLS is not available: this build uses Debian's hiredis 0.14, "
                     "which has no TLS support (reach Redis over a trusted network or a TLS "
                     "tunnel)");
            return -1;
        }
    }
    if (ls_config_check(cfg, known, err, errlen) < 0)
        return -1;
    if (cfg->nhosts != 1) {
        snprintf(err, errlen,
                 "redis store URL '%s' names %zu hosts; it takes exactly one Redis server",
                 cfg->redacted, cfg->nhosts);
        return -1;
    }

    char *user = NULL, *pass = NULL;
    if (cfg->userinfo) {
        const char *colon = strchr(cfg->userinfo, ':');
        if (!colon) {
            snprintf(err, errlen,
                     "redis store URL '%s' gives a user name but no password (want "
                     "redis://user:password@host:port or redis://:password@host:port)",
                     cfg->redacted);
            return -1;
        }
        if (colon != cfg->userinfo)
            user = strndup(cfg->userinfo, (size_t)(colon - cfg->userinfo));
        pass = strdup(colon + 1);
    }
    const char *opt_user = ls_config_get(cfg, "auth.username");
    const char *opt_pass = ls_config_get(cfg, "auth.password");
    if ((opt_user && user) || (opt_pass && cfg->userinfo)) {
        snprintf(err, errlen,
                 "redis store: credentials given both in the URL and in the auth options; give "
                 "them once");
        goto fail;
    }
    if (opt_user) {
        user = strdup(opt_user);
    }
    if (opt_pass) {
        free(pass);
        pass = strdup(opt_pass);
    }
    if (user && (!pass || !pass[0])) {
        snprintf(err, errlen, "redis store: user name '%s' needs a password (auth.password)", user);
        goto fail;
    }
    if (pass && !pass[0]) {
        free(pass);
        pass = NULL;
    }

    long db = 0;
    const char *db_text = ls_config_get(cfg, "db");
    if (cfg->path && strcmp(cfg->path, "/")) {
        if (db_text) {
            snprintf(err, errlen, "redis store: database given both in the URL path and as 'db'");
            goto fail;
        }
        db_text = cfg->path + 1;
    }
    if (db_text) {
        char *end;
        db = strtol(db_text, &end, 10);
        if (end == db_text || *end || db < 0 || db > 100000) {
            snprintf(err, errlen,
                     "redis store: database must be a number, as in redis://host:port/2 (got '%s')",
                     db_text);
            goto fail;
        }
    }
    double poll = 2;
    if (ls_config_seconds(cfg, "poll_interval", &poll, err, errlen) < 0)
        goto fail;
    /* past what a timer holds (math.huge arrives as "inf") a wait wraps to
     * none: a follower of a vacant key read the key without pause */
    if (!(poll >= 0.01 && poll <= 3600)) {
        snprintf(err, errlen,
                 "redis store option 'poll_interval' must be between 10ms and 3600s (got '%s')",
                 ls_config_get(cfg, "poll_interval"));
        goto fail;
    }

    const char *hostport = cfg->hosts[0];
    const char *colon = strrchr(hostport, ':');
    rstore *st = calloc(1, sizeof *st);
    if (hostport[0] == '[')
        st->host = strndup(hostport + 1, (size_t)(colon - hostport - 2));
    else
        st->host = strndup(hostport, (size_t)(colon - hostport));
    st->port = atoi(colon + 1);
    st->server = strdup(hostport);
    st->username = user;
    st->password = pass;
    st->db = (int)db;
    st->timeout = cfg->timeout;
    st->poll = poll;
    conn_init(&st->cmd, st, false);
    conn_init(&st->sub, st, true);
    st->reaper = evtimer_new(ls_loop_base(), reaper_cb, st);
    store->impl = st;
    return 0;
fail:
    free(user);
    free(pass);
    return -1;
}

/* redis:// and rediss:// differ only in how a store opens. */
#define REDIS_BACKEND(scheme_name, open_fn)                                                        \
    {                                                                                              \
        .scheme = scheme_name, .min_ttl = 0.5, .max_ttl = 86400 * 365, .open = open_fn,            \
        .campaign = redis_campaign, .follow = redis_follow, .cancel = redis_cancel,                \
        .close = redis_close, .inject = NULL,                                                      \
    }

const ls_backend ls_backend_redis = REDIS_BACKEND("redis", redis_open);

/* rediss:// is a known scheme with a clear refusal, not "unknown backend". */
static int rediss_open(ls_store *store, const ls_store_config *cfg, char *err, size_t errlen)
{
    snprintf(err, errlen,
             "rediss:// (Redis over TLS) is not available: this build uses Debian's hiredis 0.14, "
             "which has no TLS support; use redis:// over a trusted network or a TLS tunnel");
    return -1;
}

const ls_backend ls_backend_rediss = REDIS_BACKEND("rediss", rediss_open);
