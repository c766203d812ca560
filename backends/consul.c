/* The Consul store: consul://host:port[,host:port...], Consul's HTTP API
 * through runtime/http.c (libcurl on the loop).
 *
 * Sessions. A store keeps one Consul session per distinct election ttl (in
 * practice one per store), created with TTL = ttl and the store's
 * LockDelay, Behavior and Checks, renewed every ttl/2, or every half the
 * shortest renew_deadline of the candidates on it if that is sooner (ttl/3
 * at the default; two renewals fall within every deadline, whatever it
 * is), and destroyed when the store closes. Every election of the store
 * rides on it, so the load on Consul does not grow with the number of
 * elections. Consul's TTL floor is 10 s (min_ttl below), and Consul may
 * keep a session up to 2x its TTL after the last renewal; the engine's
 * local deadline (renew_deadline, 2/3 ttl by default, from the send time of
 * the last acknowledged renewal) ends leadership well before either.
 *
 * Elections. A candidate reads the key; if no session holds it, it sends
 * PUT /v1/kv/<key>?acquire=<session> with its value and, on `true`, reads
 * the key again to learn its term: CreateIndex + LockIndex. LockIndex alone
 * counts the key's acquisitions (by a session that did not hold it), but
 * starts again at 1 when the key is deleted (by behavior=delete, or by
 * anyone) and made again. CreateIndex is the Raft index of the key's
 * making. Every acquisition is a Raft write, so a key acquired L times is
 * deleted at an index of at least CreateIndex + L, and made again above
 * it: the sum only grows across leaders, and stays for a holder.
 * Otherwise it waits with a blocking query (?index=&wait=) and reports the
 * holder. A `false` on a vacant key means a lock-delay is running (Consul
 * refuses acquisitions for LockDelay after a session holding the key was
 * invalidated): it retries on a short timer. The leader keeps a blocking
 * query on its key to notice a release or deletion behind its back; a
 * follower is the same loop without acquiring and needs no session.
 *
 * Releases. cancel sends ?release= (so a stop hands over at once; destroying
 * the session instead would start the lock-delay). A released election that
 * may still hold its key lives on detached ("zombie") until the release is
 * answered; a new campaign on the same key waits for it, so a re-acquire
 * can never be overtaken by the old release. close destroys the sessions
 * only after every release has been answered.
 *
 * Index handling follows Consul's blocking-query notes: an index that goes
 * backwards resets to 0 (a fresh, non-blocking read), and 0 is never used
 * to block.
 *
 * The ACL token (option "token" or $CONSUL_HTTP_TOKEN) travels only in the
 * X-Consul-Token header; no message or log line includes it.
 */
#include <event2/event.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/base64.h"
#include "../runtime/http.h"
#include "../runtime/log.h"
#include "store.h"

/* Blocking query wait when no "wait" option is given: long enough to cost
 * nothing, short enough that a silently dead connection is noticed. */
#define DEFAULT_WAIT 30.0
/* Lock-delay retries and leader-watch retries back off between these. */
#define RETRY_MIN 0.1
#define RETRY_MAX 1.0
/* A session create that could not be started is retried this soon. */
#define CREATE_RETRY 1.0
/* A failed session renewal is retried after this part of the renew period
 * (the deadline is at least one period away at the first failure). */
#define RENEW_RETRY_PART 0.3
/* Consul caps LockDelay at 60 s (structs.MaxLockDelay). */
#define MAX_LOCK_DELAY 60.0

typedef struct cstore cstore;
typedef struct csession csession;
typedef struct celection celection;

enum sess_state { SESS_NONE, SESS_CREATING, SESS_READY };

struct csession {
    cstore *st;
    double ttl;
    char id[64]; /* Consul's session ID while READY */
    enum sess_state state;
    ls_http_request *req; /* create or renew in flight */
    struct event *timer;  /* the next renewal, or its retry */
    struct event *idle;   /* soon after an election leaves: still used? */
    double valid_from;    /* send time of the last acknowledged create/renew */
    double renew_at;      /* when `timer` fires for the next renewal */
    bool check_asap;      /* renew as soon as the request in flight ends */
    bool idle_pending;    /* `idle` is armed, holding the loop */
    csession *next;
};

enum phase {
    PH_IDLE,
    PH_WAIT_SESSION, /* candidate: the session is being created */
    PH_WAIT_RELEASE, /* an earlier release of this key is still in flight */
    PH_READ,         /* GET, blocking when index > 0 */
    PH_ACQUIRE,      /* PUT ?acquire= */
    PH_CONFIRM,      /* GET after `true`: is it ours, with which term? */
    PH_REFUSED,      /* GET after `false`: held by another, or a lock-delay? */
    PH_DELAY,        /* timer: a lock-delay retry, or a leader watch retry */
    PH_RELEASE,      /* PUT ?release=, detached */
};

struct celection {
    cstore *st;
    ls_election *e; /* NULL once detached (cancelled or failed) */
    csession *sess; /* candidates only */
    char *key, *path;
    char *value;
    size_t len;
    bool candidate;
    double renew_deadline; /* the engine's, for this election */
    bool leader;           /* we reported acquired and no loss since */
    bool may_hold;         /* an acquire was sent on a live session: release on cancel */
    bool zombie;           /* detached, finishing a release; holds the loop */
    enum phase phase;
    ls_http_request *req;
    struct event *timer;
    uint64_t index;        /* the blocking query index; 0: do not block */
    double retry;          /* current lock-delay / watch retry delay */
    bool delayed_acquire;  /* the PH_DELAY timer retries an acquire */
    uint64_t seq;          /* creation order, for same-key candidates */
    char sent_session[64]; /* the session the request in flight used */
    unsigned refs;         /* 1 while attached or zombie, +1 inside callbacks */
    celection *next, **pprev;
};

struct cstore {
    ls_http *http;
    char **hosts;
    size_t nhosts, cur; /* requests go to hosts[cur]; rotates on transport errors */
    bool https;
    char *token_header; /* "X-Consul-Token: ..." or NULL; never logged */
    char *dc;           /* ?dc= for every request, or NULL */
    double timeout, wait;
    char *lock_delay; /* LockDelay as sent ("0s"), or NULL: Consul's 15s */
    char *behavior;   /* "release" or "delete" */
    json_t *checks;   /* Checks as sent, or NULL: Consul's default (serfHealth) */
    csession *sessions;
    celection *elections; /* attached ones and zombies */
    uint64_t next_seq;
    bool closing;
    unsigned destroys; /* session destroys in flight */
};

/* ---- small helpers ---- */

static void arm(struct event *ev, double seconds)
{
    if (seconds < 0)
        seconds = 0;
    struct timeval tv = {(time_t)seconds, (suseconds_t)((seconds - (time_t)seconds) * 1e6)};
    evtimer_add(ev, &tv);
}

/* A key as a URL path: every byte but unreserved ones and '/' escaped. */
static char *kv_path(const char *key)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(key);
    char *out = malloc(strlen("/v1/kv/") + 3 * n + 1), *o = out;
    o += sprintf(o, "/v1/kv/");
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("-._~/", *p)) {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = 0;
    return out;
}

/* "consul 127.0.0.1:8500: renewing the session: HTTP 500: <Consul's text>" */
static void describe(const cstore *st, const char *what, const ls_http_response *res, char *out,
                     size_t n)
{
    const char *host = st->hosts[st->cur];
    if (res->status == 0) {
        snprintf(out, n, "consul %s: %s failed: %s", host, what,
                 res->error ? res->error : "no response");
        return;
    }
    /* Consul's error bodies are one line of text; keep the first line */
    char body[240] = "";
    if (res->body) {
        size_t len = strcspn(res->body, "\r\n");
        snprintf(body, sizeof body, "%.*s", (int)(len < sizeof body - 1 ? len : sizeof body - 1),
                 res->body);
    }
    if (res->status == 403)
        snprintf(out, n,
                 "consul %s: %s: permission denied (HTTP 403: %s); check the ACL token (store "
                 "option 'token' or CONSUL_HTTP_TOKEN)",
                 host, what, body);
    else
        snprintf(out, n, "consul %s: %s: HTTP %ld%s%s", host, what, res->status, *body ? ": " : "",
                 body);
}

/* Sends a request to the current host: path plus an optional query (dc is
 * appended). Bodies of PUTs are never NULL, so Content-Length is sent. */
static ls_http_request *st_send(cstore *st, const char *method, const char *path, const char *query,
                                const char *body, size_t len, double timeout, ls_http_done_fn done,
                                void *arg)
{
    size_t n = strlen(st->hosts[st->cur]) + strlen(path) + (query ? strlen(query) : 0) +
               (st->dc ? strlen(st->dc) : 0) + 32;
    char *url = malloc(n);
    snprintf(url, n, "%s://%s%s%s%s%s%s%s", st->https ? "https" : "http", st->hosts[st->cur], path,
             query || st->dc ? "?" : "", query ? query : "", query && st->dc ? "&" : "",
             st->dc ? "dc=" : "", st->dc ? st->dc : "");
    const char *headers[] = {st->token_header, NULL};
    if (!body && strcmp(method, "GET"))
        body = "";
    ls_http_request *req =
        ls_http_send(st->http, method, url, headers, body, len, timeout, done, arg);
    free(url);
    return req;
}

/* After a transport failure the next request tries the next agent. */
static void note_failure(cstore *st, const ls_http_response *res)
{
    if (res->status == 0 && st->nhosts > 1)
        st->cur = (st->cur + 1) % st->nhosts;
}

/* One entry of GET /v1/kv/<key>. */
typedef struct kv_read {
    bool found;
    char session[64]; /* "" when no session holds the key */
    uint64_t term;    /* CreateIndex + LockIndex */
    char *value;
    size_t len;
} kv_read;

static int parse_kv(const ls_http_response *res, kv_read *kv, char *err, size_t n)
{
    memset(kv, 0, sizeof *kv);
    if (res->status == 404)
        return 0;
    json_error_t jerr;
    json_t *root = json_loadb(res->body, res->len, 0, &jerr);
    json_t *entry = json_array_get(root, 0);
    json_t *value = json_object_get(entry, "Value");
    json_t *session = json_object_get(entry, "Session");
    json_t *lock_index = json_object_get(entry, "LockIndex");
    json_t *create_index = json_object_get(entry, "CreateIndex");
    int rc = -1;
    /* both are uint64 in Consul, read as signed here: a term is below 2^63 */
    if (!json_is_object(entry) || !json_is_integer(lock_index) || !json_is_integer(create_index) ||
        json_integer_value(lock_index) < 0 || json_integer_value(create_index) < 0 ||
        json_integer_value(lock_index) > INT64_MAX - json_integer_value(create_index) ||
        (session && !json_is_null(session) && !json_is_string(session)) ||
        (value && !json_is_null(value) && !json_is_string(value))) {
        snprintf(err, n, "unexpected answer to a key read: %.120s", res->body ? res->body : "");
        goto out;
    }
    if (json_is_string(value) &&
        !(kv->value =
              ls_base64_decode(json_string_value(value), json_string_length(value), &kv->len))) {
        snprintf(err, n, "the key's Value is not base64");
        goto out;
    }
    kv->found = true;
    kv->term = (uint64_t)(json_integer_value(create_index) + json_integer_value(lock_index));
    if (json_is_string(session))
        snprintf(kv->session, sizeof kv->session, "%s", json_string_value(session));
    rc = 0;
out:
    json_decref(root);
    return rc;
}

/* ---- elections: lifetime ---- */

static void ce_ref(celection *ce) { ce->refs++; }

static void ce_unref(celection *ce)
{
    if (--ce->refs > 0)
        return;
    *ce->pprev = ce->next;
    if (ce->next)
        ce->next->pprev = ce->pprev;
    ls_http_cancel(ce->req);
    event_free(ce->timer);
    free(ce->key);
    free(ce->path);
    free(ce->value);
    free(ce);
}

/* Every attached election of st for which pick() holds, referenced, so
 * reports to them may cancel any of them meanwhile. NULL-terminated. */
static celection **snapshot(cstore *st, bool (*pick)(celection *, void *), void *arg)
{
    size_t n = 0;
    for (celection *ce = st->elections; ce; ce = ce->next)
        n++;
    celection **list = calloc(n + 1, sizeof *list), **p = list;
    for (celection *ce = st->elections; ce; ce = ce->next)
        if (ce->e && pick(ce, arg)) {
            ce_ref(ce);
            *p++ = ce;
        }
    return list;
}

static void snapshot_free(celection **list)
{
    for (celection **p = list; *p; p++)
        ce_unref(*p);
    free(list);
}

static void on_timer(evutil_socket_t fd, short what, void *arg);
static void ce_start(celection *ce);
static void ce_read(celection *ce, enum phase phase);
static void ce_release(celection *ce);
static void close_step(cstore *st);
static void session_ensure(csession *s);
static void session_check(csession *s);
static void session_lost(csession *s, const char *id, const char *why);
static void session_idle_soon(csession *s);

static celection *ce_new(cstore *st, ls_election *e, csession *sess)
{
    struct ls_election_view *view = ls_election_view(e);
    celection *ce = calloc(1, sizeof *ce);
    ce->st = st;
    ce->e = e;
    ce->sess = sess;
    ce->key = strdup(view->key);
    ce->path = kv_path(view->key);
    ce->candidate = view->candidate;
    ce->renew_deadline = view->renew_deadline;
    if (view->candidate) {
        ce->value = malloc(view->value_len + 1);
        memcpy(ce->value, view->value, view->value_len);
        ce->value[view->value_len] = 0;
        ce->len = view->value_len;
    }
    ce->timer = evtimer_new(ls_loop_base(), on_timer, ce);
    ce->refs = 1;
    ce->seq = ++st->next_seq;
    ce->next = st->elections;
    if (ce->next)
        ce->next->pprev = &ce->next;
    ce->pprev = &st->elections;
    st->elections = ce;
    view->backend_data = ce;
    return ce;
}

static bool release_pending(cstore *st, const char *key)
{
    for (celection *ce = st->elections; ce; ce = ce->next)
        if (ce->zombie && !strcmp(ce->key, key))
            return true;
    return false;
}

/* Candidates of one key in one store share a session, and Consul's lock
 * cannot tell them apart: only the oldest of them campaigns; the others
 * follow the key until it is their turn. */
static bool ce_is_front(const celection *ce)
{
    for (celection *o = ce->st->elections; o; o = o->next)
        if (o != ce && o->e && o->candidate && o->sess == ce->sess && o->seq < ce->seq &&
            !strcmp(o->key, ce->key))
            return false;
    return true;
}

/* A candidate left: the next one of its key, following so far, campaigns. */
static void kick_next(cstore *st, const char *key, csession *sess)
{
    for (celection *ce = st->elections; ce; ce = ce->next) {
        if (ce->e && ce->candidate && ce->sess == sess && !strcmp(ce->key, key) &&
            ce_is_front(ce)) {
            if (ce->phase == PH_READ) {
                ls_http_cancel(ce->req);
                ce->req = NULL;
                ce_start(ce);
            }
            return;
        }
    }
}

/* A zombie's work is over: let campaigns waiting on its key go on. */
static void zombie_done(celection *ce)
{
    cstore *st = ce->st;
    ce->zombie = false;
    ce->phase = PH_IDLE;
    char *key = strdup(ce->key);
    csession *sess = ce->sess;
    ce_unref(ce);
    if (sess)
        session_idle_soon(sess);
    if (!release_pending(st, key)) {
        for (celection *w = st->elections; w; w = w->next)
            if (w->e && w->phase == PH_WAIT_RELEASE && !strcmp(w->key, key))
                ce_start(w);
    }
    free(key);
    ls_loop_release();
    if (st->closing)
        close_step(st);
}

/* Ends ce's part in its election: no report for it after this. If it may
 * hold the key, it stays alive to release it. */
static void ce_detach(celection *ce)
{
    bool was_candidate = ce->e && ce->candidate;
    if (ce->e) {
        ls_election_view(ce->e)->backend_data = NULL;
        ce->e = NULL;
    }
    ce->leader = false;
    evtimer_del(ce->timer);
    bool live_session = ce->sess && ce->sess->state == SESS_READY;
    cstore *st = ce->st;
    csession *sess = ce->sess;
    char *key = was_candidate ? strdup(ce->key) : NULL;
    if (ce->phase == PH_ACQUIRE && ce->req) {
        /* Cancelling could let the acquire land after a release sent now
         * on another connection; let it finish and release after it. */
        ce->zombie = true;
        ls_loop_hold();
    } else {
        ls_http_cancel(ce->req);
        ce->req = NULL;
        if (ce->may_hold && live_session) {
            ce->zombie = true;
            ls_loop_hold();
            ce_release(ce);
        } else {
            ce->phase = PH_IDLE;
            ce_unref(ce);
        }
    }
    if (key) {
        kick_next(st, key, sess);
        free(key);
    }
    if (sess)
        session_idle_soon(sess);
}

/* The attempt failed for good: hand the election back to the engine, which
 * reports the error and retries after its backoff. */
static void ce_fail(celection *ce, const char *message)
{
    ls_election *e = ce->e;
    ce_detach(ce);
    ls_election_failed(e, message);
}

/* ---- elections: the steps ---- */

static void on_read(void *arg, const ls_http_response *res);
static void on_acquire(void *arg, const ls_http_response *res);
static void on_release(void *arg, const ls_http_response *res);

/* A request could not even be set up (libcurl out of resources): try the
 * step again a little later rather than stall. */
static void ce_retry_setup(celection *ce)
{
    ls_log(LS_ERROR, "consul: could not start a request for '%s'; retrying", ce->key);
    ce->phase = PH_DELAY;
    ce->delayed_acquire = false;
    arm(ce->timer, RETRY_MAX);
}

static void ce_read(celection *ce, enum phase phase)
{
    cstore *st = ce->st;
    char query[96];
    double timeout = st->timeout;
    bool block = phase == PH_READ && ce->index > 0;
    if (block) {
        snprintf(query, sizeof query, "index=%" PRIu64 "&wait=%gs", ce->index, st->wait);
        /* Consul adds up to wait/16 to spread wake-ups */
        timeout += st->wait + st->wait / 16;
    }
    ce->phase = phase;
    ce->req = st_send(st, "GET", ce->path, block ? query : NULL, NULL, 0, timeout, on_read, ce);
    if (!ce->req)
        ce_retry_setup(ce);
}

static void ce_acquire(celection *ce)
{
    char query[96];
    snprintf(query, sizeof query, "acquire=%s", ce->sess->id);
    snprintf(ce->sent_session, sizeof ce->sent_session, "%s", ce->sess->id);
    ce->phase = PH_ACQUIRE;
    ce->may_hold = true;
    ce->req = st_send(ce->st, "PUT", ce->path, query, ce->value, ce->len, ce->st->timeout,
                      on_acquire, ce);
    if (!ce->req)
        ce_retry_setup(ce);
}

static void ce_release(celection *ce)
{
    char query[96];
    snprintf(query, sizeof query, "release=%s", ce->sess->id);
    ce->phase = PH_RELEASE;
    ce->req = st_send(ce->st, "PUT", ce->path, query, "", 0, ce->st->timeout, on_release, ce);
    if (!ce->req)
        zombie_done(ce); /* the session's end will free the key */
}

static void ce_start(celection *ce)
{
    ce->index = 0;
    if (ce->candidate && release_pending(ce->st, ce->key)) {
        ce->phase = PH_WAIT_RELEASE;
    } else if (ce->candidate && ce_is_front(ce) && ce->sess->state != SESS_READY) {
        ce->phase = PH_WAIT_SESSION;
        session_ensure(ce->sess);
    } else {
        ce_read(ce, PH_READ);
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    celection *ce = arg;
    if (!ce->e || ce->phase != PH_DELAY)
        return;
    if (ce->delayed_acquire && ce->sess->state == SESS_READY && ce_is_front(ce))
        ce_acquire(ce);
    else
        ce_start(ce);
}

static double next_retry(celection *ce)
{
    ce->retry = ce->retry > 0 ? fmin(ce->retry * 2, RETRY_MAX) : RETRY_MIN;
    return ce->retry;
}

/* A read or acquire failed. A leader keeps leading (the session and the
 * engine's deadline decide that) and watches again after a pause; anyone
 * else hands the failure to the engine's retry policy. */
static void ce_request_failed(celection *ce, const char *message)
{
    if (ce->leader) {
        ls_election *e = ce->e;
        ls_election_error(e, message);
        if (ce->e != e)
            return;
        ce->phase = PH_DELAY;
        ce->delayed_acquire = false;
        arm(ce->timer, next_retry(ce));
        return;
    }
    ce_fail(ce, message);
}

/* What a read found, for an attached election. */
static void ce_handle_read(celection *ce, enum phase phase, const ls_http_response *res)
{
    ls_election *e = ce->e;
    cstore *st = ce->st;
    char msg[512];
    if (res->status != 200 && res->status != 404) {
        describe(st, "reading the key", res, msg, sizeof msg);
        note_failure(st, res);
        ce_request_failed(ce, msg);
        return;
    }
    kv_read kv;
    if (parse_kv(res, &kv, msg, sizeof msg) < 0) {
        ce_request_failed(ce, msg);
        return;
    }
    /* Consul: an index that goes backwards (a restored snapshot, a new
     * cluster) restarts the loop from 0; an index must be >= 1 to block. */
    const char *h = ls_http_header_get(res, "X-Consul-Index");
    uint64_t index = h ? strtoull(h, NULL, 10) : 0;
    if (index < ce->index) {
        ls_log(LS_INFO,
               "consul: the index of '%s' went back from %" PRIu64 " to %" PRIu64
               ": reading afresh",
               ce->key, ce->index, index);
        ce->index = 0;
    } else {
        ce->index = index > 0 ? index : 1;
    }

    csession *s = ce->sess;
    bool front = ce->candidate && ce_is_front(ce);
    bool ours = front && kv.session[0] && s->state == SESS_READY && !strcmp(kv.session, s->id);
    if (ours) {
        ce->retry = 0;
        if (ce->leader) {
            ce_read(ce, PH_READ); /* still ours: keep watching */
        } else if (phase == PH_CONFIRM) {
            ce->leader = true;
            ls_election_acquired(e, kv.term, s->valid_from);
            if (ce->e == e) {
                /* the holding is proven from the last renewal: refresh it
                 * if it is old, so the deadline starts with room (a
                 * quarter of renew_deadline: ttl/6 by default) */
                if (ls_now() - s->valid_from > ce->renew_deadline / 4)
                    session_check(s);
                ce_read(ce, PH_READ);
            }
        } else {
            /* our session holds it, but we never saw the acquire answered
             * (a lost reply): acquire again, which keeps the term */
            ce_acquire(ce);
        }
        free(kv.value);
        return;
    }

    if (ce->leader) {
        ce->leader = false;
        ce->may_hold = false;
        /* Released or taken over: only an invalidated session clears
         * Session (or a release with our session ID); a deletion removes
         * the key. Check the session at once in the first case. */
        ls_election_lost(e, kv.found ? "session" : "deleted");
        if (ce->e != e)
            goto out;
        if (kv.found)
            session_check(s);
    }
    if (kv.session[0])
        ls_election_leader(e, kv.value ? kv.value : "", kv.len, kv.term);
    else
        ls_election_leader(e, NULL, 0, 0);
    if (ce->e != e)
        goto out;

    if (!front || kv.session[0]) {
        ce->retry = 0;
        ce_read(ce, PH_READ); /* wait for a change */
    } else if (phase == PH_REFUSED) {
        /* refused on a vacant key: the lock-delay of an invalidated
         * session is running; Consul says nothing of how long */
        ce->phase = PH_DELAY;
        ce->delayed_acquire = true;
        arm(ce->timer, next_retry(ce));
    } else if (s->state != SESS_READY) {
        ce->phase = PH_WAIT_SESSION;
        session_ensure(s);
    } else {
        ce_acquire(ce);
    }
out:
    free(kv.value);
}

static void on_read(void *arg, const ls_http_response *res)
{
    celection *ce = arg;
    enum phase phase = ce->phase;
    ce->req = NULL;
    ce->phase = PH_IDLE;
    if (!ce->e)
        return; /* detached elections cancel their reads */
    ce_ref(ce);
    ce_handle_read(ce, phase, res);
    ce_unref(ce);
}

static void on_acquire(void *arg, const ls_http_response *res)
{
    celection *ce = arg;
    cstore *st = ce->st;
    ce->req = NULL;
    ce->phase = PH_IDLE;
    ce_ref(ce);
    if (!ce->e) {
        /* cancelled while the acquire was out: undo whatever it did */
        if (ce->sess->state == SESS_READY && !strcmp(ce->sent_session, ce->sess->id))
            ce_release(ce);
        else
            zombie_done(ce);
    } else if (res->status == 200) {
        bool won = res->body && !strncmp(res->body, "true", 4);
        ce_read(ce, won ? PH_CONFIRM : PH_REFUSED);
    } else if (res->status == 500 && res->body && strstr(res->body, "invalid session")) {
        /* our session is gone (invalidated behind our back) */
        session_lost(ce->sess, ce->sent_session, "an acquire found it invalid");
    } else {
        char msg[512];
        describe(st, "acquiring the key", res, msg, sizeof msg);
        note_failure(st, res);
        ce_request_failed(ce, msg);
    }
    ce_unref(ce);
    if (st->closing)
        close_step(st); /* the zombie_done above could not free while we held ce */
}

static void on_release(void *arg, const ls_http_response *res)
{
    celection *ce = arg;
    ce->req = NULL;
    if (res->status != 200) {
        char msg[512];
        describe(ce->st, "releasing the key", res, msg, sizeof msg);
        note_failure(ce->st, res);
        /* nobody to tell: the session's end frees the key regardless */
        ls_log(LS_WARN, "%s", msg);
    }
    zombie_done(ce);
}

/* ---- sessions ---- */

static void on_session_timer(evutil_socket_t fd, short what, void *arg);
static void on_session_idle(evutil_socket_t fd, short what, void *arg);
static void session_destroy(csession *s);
static void on_session_created(void *arg, const ls_http_response *res);
static void on_session_renewed(void *arg, const ls_http_response *res);

static csession *session_for(cstore *st, double ttl)
{
    for (csession *s = st->sessions; s; s = s->next)
        if (s->ttl == ttl)
            return s;
    csession *s = calloc(1, sizeof *s);
    s->st = st;
    s->ttl = ttl;
    s->timer = evtimer_new(ls_loop_base(), on_session_timer, s);
    s->idle = evtimer_new(ls_loop_base(), on_session_idle, s);
    s->next = st->sessions;
    st->sessions = s;
    return s;
}

/* Half the shortest renew_deadline of the candidates on s, or ttl/2 if
 * that is sooner: every one of them sees two renewals within its deadline. */
static double session_period(const csession *s)
{
    double period = s->ttl / 2;
    for (celection *ce = s->st->elections; ce; ce = ce->next)
        if (ce->e && ce->sess == s && ce->renew_deadline > 0 && ce->renew_deadline / 2 < period)
            period = ce->renew_deadline / 2;
    return period;
}

static void session_arm(csession *s, double at)
{
    s->renew_at = at;
    arm(s->timer, at - ls_now());
}

/* A candidate joined s: its renew_deadline may want the next renewal
 * sooner than it is due. (A create or renew in flight schedules the next
 * one when it ends.) */
static void session_joined(csession *s)
{
    if (s->state != SESS_READY || s->req)
        return;
    double due = s->valid_from + session_period(s);
    if (!evtimer_pending(s->timer, NULL) || due < s->renew_at)
        session_arm(s, due);
}

static void session_ensure(csession *s)
{
    if (s->state != SESS_NONE || s->st->closing)
        return;
    cstore *st = s->st;
    char ttl[32];
    snprintf(ttl, sizeof ttl, "%gs", s->ttl);
    json_t *body =
        json_pack("{s:s, s:s, s:s}", "Name", "leadership", "Behavior", st->behavior, "TTL", ttl);
    if (st->lock_delay)
        json_object_set_new(body, "LockDelay", json_string(st->lock_delay));
    if (st->checks)
        json_object_set(body, "Checks", st->checks);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    s->state = SESS_CREATING;
    s->req = st_send(st, "PUT", "/v1/session/create", NULL, text, strlen(text), st->timeout,
                     on_session_created, s);
    free(text);
    if (!s->req) {
        s->state = SESS_NONE;
        arm(s->timer, CREATE_RETRY);
    }
}

static void session_renew(csession *s)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/session/renew/%s", s->id);
    evtimer_del(s->timer);
    s->check_asap = false;
    s->req = st_send(s->st, "PUT", path, NULL, "", 0, s->st->timeout, on_session_renewed, s);
    if (!s->req)
        session_arm(s, ls_now() + session_period(s) * RENEW_RETRY_PART);
}

/* Renews now (or right after the request in flight): to learn at once
 * whether the session still exists, and to refresh valid_from. */
static void session_check(csession *s)
{
    if (s->state != SESS_READY)
        return;
    if (s->req)
        s->check_asap = true;
    else
        session_renew(s);
}

static bool on_session_waiting(celection *ce, void *arg)
{
    return ce->sess == arg && ce->phase == PH_WAIT_SESSION;
}

static bool on_session_leading(celection *ce, void *arg) { return ce->sess == arg && ce->leader; }

static bool on_session_any(celection *ce, void *arg) { return ce->sess == arg; }

static void on_session_timer(evutil_socket_t fd, short what, void *arg)
{
    csession *s = arg;
    if (s->req)
        return;
    if (s->state == SESS_READY) {
        session_renew(s);
    } else if (s->state == SESS_NONE) {
        /* a create that could not be started: only if someone waits */
        celection **list = snapshot(s->st, on_session_waiting, s);
        if (list[0])
            session_ensure(s);
        snapshot_free(list);
    }
}

static void on_session_created(void *arg, const ls_http_response *res)
{
    csession *s = arg;
    cstore *st = s->st;
    s->req = NULL;
    json_t *root = res->status == 200 ? json_loadb(res->body, res->len, 0, NULL) : NULL;
    const char *id = json_string_value(json_object_get(root, "ID"));
    bool ok = id && *id && strlen(id) < sizeof s->id &&
              strspn(id, "0123456789abcdefABCDEF-") == strlen(id);
    if (ok && st->closing) {
        /* nobody wants it any more: end it at once */
        snprintf(s->id, sizeof s->id, "%s", id);
        s->state = SESS_READY;
        json_decref(root);
        close_step(st);
        return;
    }
    if (ok) {
        snprintf(s->id, sizeof s->id, "%s", id);
        s->state = SESS_READY;
        s->valid_from = res->sent_at;
        session_arm(s, res->sent_at + session_period(s));
        ls_log_event(LS_DEBUG, "consul session created", "session", s->id, NULL);
        json_decref(root);
        celection **list = snapshot(st, on_session_waiting, s);
        for (celection **p = list; *p; p++)
            if ((*p)->e && (*p)->phase == PH_WAIT_SESSION)
                ce_start(*p);
        snapshot_free(list);
        return;
    }
    json_decref(root);
    s->state = SESS_NONE;
    char msg[512];
    if (res->status == 200) {
        snprintf(msg, sizeof msg, "consul %s: creating a session: unexpected answer: %.120s",
                 st->hosts[st->cur], res->body ? res->body : "");
    } else {
        describe(st, "creating a session", res, msg, sizeof msg);
        note_failure(st, res);
    }
    if (st->closing) {
        close_step(st);
        return;
    }
    celection **list = snapshot(st, on_session_waiting, s);
    for (celection **p = list; *p; p++)
        if ((*p)->e && (*p)->phase == PH_WAIT_SESSION)
            ce_fail(*p, msg);
    snapshot_free(list);
}

static void on_session_renewed(void *arg, const ls_http_response *res)
{
    csession *s = arg;
    cstore *st = s->st;
    s->req = NULL;
    if (res->status == 404) {
        session_lost(s, s->id, "a renewal found it gone");
        return;
    }
    if (res->status != 200) {
        char msg[512];
        describe(st, "renewing the session", res, msg, sizeof msg);
        note_failure(st, res);
        session_arm(s, ls_now() + session_period(s) * RENEW_RETRY_PART);
        celection **list = snapshot(st, on_session_leading, s);
        for (celection **p = list; *p; p++)
            if ((*p)->e && (*p)->leader)
                ls_election_error((*p)->e, msg);
        snapshot_free(list);
        return;
    }
    double sent = res->sent_at;
    s->valid_from = sent;
    if (s->check_asap)
        session_renew(s);
    else
        session_arm(s, sent + session_period(s));
    celection **list = snapshot(st, on_session_leading, s);
    for (celection **p = list; *p; p++)
        if ((*p)->e && (*p)->leader)
            ls_election_renewed((*p)->e, sent);
    snapshot_free(list);
}

/* The session `id` no longer exists in Consul (TTL expired, destroyed,
 * a check failed): its locks are gone. Every election on it loses
 * ("session") if it led, and waits for a new session. */
static void session_lost(csession *s, const char *id, const char *why)
{
    if (s->state != SESS_READY || strcmp(s->id, id))
        return; /* already handled */
    cstore *st = s->st;
    ls_log_event(LS_WARN, "consul session lost", "session", s->id, "why", why, NULL);
    s->state = SESS_NONE;
    s->id[0] = 0;
    evtimer_del(s->timer);
    ls_http_cancel(s->req);
    s->req = NULL;
    s->check_asap = false;

    celection **list = snapshot(st, on_session_any, s);
    for (celection **p = list; *p; p++) {
        celection *ce = *p;
        ls_http_cancel(ce->req);
        ce->req = NULL;
        evtimer_del(ce->timer);
        ce->may_hold = false; /* a gone session holds nothing */
        ce->phase = PH_WAIT_SESSION;
    }
    for (celection **p = list; *p; p++) {
        celection *ce = *p;
        if (ce->e && ce->leader) {
            ce->leader = false;
            ls_election_lost(ce->e, "session");
        }
    }
    snapshot_free(list);
    list = snapshot(st, on_session_waiting, s);
    if (list[0])
        session_ensure(s);
    snapshot_free(list);
}

/* A session no election uses is destroyed, so a process whose elections
 * all stopped (SIGTERM) leaves nothing behind in Consul. Checked a moment
 * after an election leaves: a resign campaigns again at once and keeps it. */
static void session_idle_soon(csession *s)
{
    if (s->state != SESS_READY || s->st->closing || s->idle_pending)
        return;
    /* held, or leadership.run() could return before the check runs */
    s->idle_pending = true;
    ls_loop_hold();
    arm(s->idle, 0);
}

static void session_idle_cancel(csession *s)
{
    evtimer_del(s->idle);
    if (s->idle_pending) {
        s->idle_pending = false;
        ls_loop_release();
    }
}

static void on_session_idle(evutil_socket_t fd, short what, void *arg)
{
    csession *s = arg;
    bool used = false;
    for (celection *ce = s->st->elections; ce; ce = ce->next)
        used = used || (ce->sess == s && (ce->e || ce->zombie));
    if (!used && s->state == SESS_READY && !s->st->closing)
        session_destroy(s);
    session_idle_cancel(s);
}

static void on_session_destroyed(void *arg, const ls_http_response *res)
{
    cstore *st = arg;
    if (res->status != 200) {
        char msg[512];
        describe(st, "destroying the session", res, msg, sizeof msg);
        ls_log(LS_WARN, "%s (it expires after its TTL)", msg);
    }
    st->destroys--;
    ls_loop_release();
    if (st->closing)
        close_step(st);
}

/* Ends s in Consul; s itself is free for a new session at once. */
static void session_destroy(csession *s)
{
    cstore *st = s->st;
    char path[128];
    snprintf(path, sizeof path, "/v1/session/destroy/%s", s->id);
    evtimer_del(s->timer);
    ls_http_cancel(s->req);
    s->req = NULL;
    s->state = SESS_NONE;
    s->id[0] = 0;
    s->check_asap = false;
    if (st_send(st, "PUT", path, NULL, "", 0, st->timeout, on_session_destroyed, st)) {
        st->destroys++;
        ls_loop_hold();
    }
}

/* ---- the vtable ---- */

static void consul_campaign(ls_store *store, ls_election *e)
{
    cstore *st = store->impl;
    csession *s = session_for(st, ls_election_view(e)->ttl);
    ce_start(ce_new(st, e, s));
    session_joined(s);
}

static void consul_follow(ls_store *store, ls_election *e)
{
    cstore *st = store->impl;
    ce_start(ce_new(st, e, NULL));
}

static void consul_cancel(ls_store *store, ls_election *e)
{
    celection *ce = ls_election_view(e)->backend_data;
    if (ce)
        ce_detach(ce);
}

static void store_free(cstore *st)
{
    while (st->sessions) {
        csession *s = st->sessions;
        st->sessions = s->next;
        ls_http_cancel(s->req);
        event_free(s->timer);
        event_free(s->idle);
        free(s);
    }
    ls_http_free(st->http);
    for (size_t i = 0; i < st->nhosts; i++)
        free(st->hosts[i]);
    free(st->hosts);
    free(st->token_header);
    free(st->dc);
    free(st->lock_delay);
    free(st->behavior);
    json_decref(st->checks);
    free(st);
}

/* Close, step by step: wait for every release, then destroy the sessions
 * (a destroy while a key is still held would start its lock-delay), then
 * free everything. Called again whenever one of those ends. */
static void close_step(cstore *st)
{
    /* zombies finishing a release, or one a callback still holds (on_acquire
     * comes back here once it lets go) */
    if (st->elections)
        return;
    for (csession *s = st->sessions; s; s = s->next) {
        if (s->state == SESS_CREATING)
            return; /* on_session_created comes back here */
        evtimer_del(s->timer);
        session_idle_cancel(s);
        if (s->state == SESS_READY)
            session_destroy(s);
    }
    if (st->destroys > 0)
        return; /* on_session_destroyed comes back here */
    store_free(st);
    ls_loop_release();
}

static void consul_close(ls_store *store)
{
    cstore *st = store->impl;
    store->impl = NULL;
    st->closing = true;
    ls_loop_hold();
    close_step(st);
}

static int consul_open(ls_store *store, const ls_store_config *cfg, char *err, size_t errlen)
{
    static const char *const known[] = {"lock_delay", "behavior", "checks", "token",
                                        "dc",         "wait",     "tls",    "tls.ca",
                                        "tls.cert",   "tls.key",  NULL};
    if (ls_config_check(cfg, known, err, errlen) < 0)
        return -1;
    if (cfg->userinfo) {
        snprintf(err, errlen,
                 "consul store URL '%s' has credentials: Consul takes an ACL token, as store "
                 "option 'token' (or CONSUL_HTTP_TOKEN)",
                 cfg->redacted);
        return -1;
    }
    if (cfg->path && *cfg->path && strcmp(cfg->path, "/")) {
        snprintf(err, errlen, "consul store URL '%s' has a path; want consul://host:port",
                 cfg->redacted);
        return -1;
    }
    double lock_delay = -1, wait = DEFAULT_WAIT;
    if (ls_config_seconds(cfg, "lock_delay", &lock_delay, err, errlen) < 0 ||
        ls_config_seconds(cfg, "wait", &wait, err, errlen) < 0)
        return -1;
    if (lock_delay > MAX_LOCK_DELAY) {
        snprintf(err, errlen, "consul store option 'lock_delay' is %g s; Consul caps it at %g s",
                 lock_delay, MAX_LOCK_DELAY);
        return -1;
    }
    if (wait < 1 || wait > 600) {
        snprintf(err, errlen,
                 "consul store option 'wait' must be between 1 s and 600 s (Consul's limit)");
        return -1;
    }
    const char *behavior = ls_config_get(cfg, "behavior");
    if (!behavior)
        behavior = "release";
    if (strcmp(behavior, "release") && strcmp(behavior, "delete")) {
        snprintf(err, errlen,
                 "consul store option 'behavior' must be 'release' or 'delete', not "
                 "'%s'",
                 behavior);
        return -1;
    }
    const char *tls = ls_config_get(cfg, "tls");
    if (tls && strcmp(tls, "true") && strcmp(tls, "false")) {
        snprintf(err, errlen, "consul store option 'tls' must be true or false");
        return -1;
    }
    const char *ca = ls_config_get(cfg, "tls.ca"), *cert = ls_config_get(cfg, "tls.cert"),
               *key = ls_config_get(cfg, "tls.key");
    bool https = (tls && !strcmp(tls, "true")) || ((ca || cert || key) && !tls);
    const char *token = ls_config_get(cfg, "token");
    if (!token)
        token = getenv("CONSUL_HTTP_TOKEN");
    if (token && (!*token || strpbrk(token, "\r\n"))) {
        snprintf(err, errlen, "consul store: the ACL token is empty or has a line break");
        return -1;
    }
    const char *dc = ls_config_get(cfg, "dc");
    if (dc && (!*dc || dc[strspn(dc, "abcdefghijklmnopqrstuvwxyz"
                                     "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")])) {
        snprintf(err, errlen, "consul store option 'dc' must be a datacenter name");
        return -1;
    }

    ls_http_options opts = {.ca = ca, .cert = cert, .key = key, .connect_timeout = cfg->timeout};
    ls_http *http = ls_http_new(&opts, err, errlen);
    if (!http)
        return -1;
    cstore *st = calloc(1, sizeof *st);
    st->http = http;
    st->nhosts = cfg->nhosts;
    st->hosts = calloc(cfg->nhosts, sizeof *st->hosts);
    for (size_t i = 0; i < cfg->nhosts; i++)
        st->hosts[i] = strdup(cfg->hosts[i]);
    st->https = https;
    if (token) {
        size_t n = strlen(token) + 32;
        st->token_header = malloc(n);
        snprintf(st->token_header, n, "X-Consul-Token: %s", token);
    }
    st->dc = dc ? strdup(dc) : NULL;
    st->timeout = cfg->timeout;
    st->wait = wait;
    if (lock_delay >= 0) {
        char text[32];
        snprintf(text, sizeof text, "%gs", lock_delay);
        st->lock_delay = strdup(text);
    }
    st->behavior = strdup(behavior);
    const char *checks = ls_config_get(cfg, "checks");
    if (checks) {
        /* "a,b": these node checks; "": none (the session then lives by
         * its TTL alone) */
        st->checks = json_array();
        char *copy = strdup(checks), *save = NULL;
        for (char *c = strtok_r(copy, ",", &save); c; c = strtok_r(NULL, ",", &save)) {
            while (*c == ' ')
                c++;
            size_t n = strlen(c);
            while (n > 0 && c[n - 1] == ' ')
                c[--n] = 0;
            if (n)
                json_array_append_new(st->checks, json_string(c));
        }
        free(copy);
    }
    store->impl = st;
    return 0;
}

const ls_backend ls_backend_consul = {
    .scheme = "consul",
    /* Consul refuses session TTLs outside [10s, 24h] */
    .min_ttl = 10,
    .max_ttl = 86400,
    .open = consul_open,
    .campaign = consul_campaign,
    .follow = consul_follow,
    .cancel = consul_cancel,
    .close = consul_close,
    .inject = NULL,
};
