/* etcd v3 through its JSON gateway (/v3/kv, /v3/lease, /v3/watch), over
 * runtime/http.c on the loop.
 *
 * One lease per store and ttl, kept alive for all elections on it every
 * ttl/3 or every half the shortest renew_deadline among them; a candidate
 * joining it campaigns on a keepalive fresh enough for its own. Each
 * candidate creates "<key>/<lease hex>" under that lease (a txn guarded by
 * create_revision == 0); the lowest create_revision under "<key>/" leads
 * and that revision is the term; a waiting candidate watches only the
 * deletion of the key just before its own (etcd's concurrency package,
 * without the herd). Every watch of a store shares one /v3/watch stream;
 * unary calls share a pool of UNARY_CONNECTIONS, and keepalives have a
 * connection of their own, so neither a burst of campaigns nor a grant or
 * revoke waiting on a member that hangs queues a keepalive behind it (its
 * send time is every leader's deadline).
 *
 * Re-entrancy: a report to the engine may run Lua, which may cancel any
 * election or drop the store. Objects are therefore only marked dead while
 * a callback of ours is on the stack (s->depth) and freed when the
 * outermost one returns.
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

#define UNARY_CONNECTIONS 2 /* + lease calls + the watch stream: 4 per store at most */
#define WATCH_BUCKETS 1024
/* The watch stream asks for a progress report this often and counts the
 * member lost after STREAM_SILENCE seconds without a byte: with the
 * request body paused, libcurl would not notice a dead peer by itself. */
#define STREAM_HEARTBEAT 1.0
#define STREAM_SILENCE 3.5

typedef struct etcd etcd;
typedef struct lease lease;
typedef struct entry entry;
typedef struct watch watch;
typedef struct call call;
typedef struct release release;

/* reply: the parsed JSON (borrowed) or NULL with err. */
typedef void (*call_fn)(void *ctx, json_t *reply, const char *err, double sent_at);

/* One unary request, retried on the next member when one fails, and
 * re-sent with a fresh token when etcd rejects the old one. */
struct call {
    etcd *s;
    char *path;
    char *body;
    call_fn fn;
    void *ctx;
    ls_http *via;
    ls_http_request *req;
    struct event *timer; /* retry delay */
    size_t endpoint;     /* member of the current attempt */
    unsigned attempts;
    double timeout; /* of each attempt, seconds */
    bool auth_retried;
    bool waiting_auth;
    bool auth_failed;  /* to be finished with the authentication error */
    call *prev, *next; /* s->calls */
};

typedef enum {
    WATCH_EVENTS,    /* events: a JSON array */
    WATCH_COMPACTED, /* history gone past our start: read again, watch anew */
    WATCH_FAILED,    /* the stream broke (err); the watch resumes on reconnect */
    WATCH_CANCELLED, /* the server ended this watch for good (err) */
} watch_kind;
typedef void (*watch_fn)(void *ctx, watch_kind kind, json_t *events, const char *err);

/* One watch on the shared stream, with an id we choose. */
struct watch {
    etcd *s;
    int64_t id;
    char *key, *range_end; /* base64; range_end NULL: the one key */
    int64_t next_rev;      /* resume point after a reconnect */
    bool noput;
    bool leader_own; /* a leader's watch of its own key: keep-alives pace its checks */
    watch_fn fn;
    void *ctx;
    watch *bucket_next;
};

typedef enum {
    E_WAIT_LEASE,   /* candidate: its lease is being granted, or kept alive afresh */
    E_WAIT_RELEASE, /* candidate: the last deletion of its key name is in flight */
    E_CREATING,     /* create txn in flight */
    E_CHECKING,     /* "am I first?" txn in flight */
    E_WAITING,      /* watching the predecessor's deletion */
    E_LEADER,       /* watching our own key's deletion */
    E_READING,      /* follower: range in flight */
    E_FOLLOWING,    /* follower: watching the prefix */
} entry_state;

/* The backend side of one election. */
struct entry {
    etcd *s;
    ls_election *e; /* NULL once cancelled */
    entry_state state;
    bool candidate;
    char *prefix;       /* "<key>/" */
    char *name;         /* our key, "<key>/<lease hex>[.n]" */
    uint64_t name_hash; /* of name: thousands of campaigns compare it first */
    lease *lease;
    int64_t rev; /* our key's create_revision */
    call *call;
    watch *watch;
    bool key_gone;      /* leader's key was deleted: is it the lease? */
    double gone_at;     /* when we learnt it: only a later keepalive answers */
    double lease_asked; /* when it asked for a fresh keepalive to campaign on, or 0 */
    char *leader_key;   /* follower: the leading key it reported */
    bool dead;
    entry *lease_prev, *lease_next;
    entry *prev, *next; /* s->entries */
    entry *grave_next;
};

struct lease {
    etcd *s;
    double ttl;
    int64_t id;          /* 0 until granted */
    bool alive;          /* granted, not known dead */
    double valid_from;   /* send time of the last acknowledged grant or keepalive */
    unsigned users;      /* candidates on it */
    call *call;          /* grant or keepalive in flight */
    struct event *timer; /* next keepalive */
    struct event *idle;  /* revoke once nobody used it for a loop turn */
    bool idle_armed;
    bool probe; /* a keepalive is wanted as soon as possible */
    entry *entries;
    lease *next;
};

/* The deletion of a cancelled candidate's key, finished in the background. */
struct release {
    etcd *s;
    char *name;
    int64_t lease_id; /* the key's: it lives as long as that lease */
    call *call;
    struct event *timer;
    unsigned attempts;
    entry *waiter; /* campaigns on the same name wait for us */
    release *next;
};

/* Where the watch stream's next message ends, as far as it has been read:
 * messages are JSON objects, back to back or between newlines. */
typedef struct stream_frame {
    size_t end;
    unsigned depth;
    bool in_string, escaped;
} stream_frame;

struct etcd {
    ls_store *store;
    char **endpoints; /* "http(s)://host:port" */
    size_t nendpoints, current;
    double timeout;
    char *user, *password;
    char *token;
    ls_http_request *auth_req;
    ls_http *http;       /* unary calls */
    ls_http *lease_http; /* keepalives */
    ls_http *watch_http; /* the one watch stream */
    call *calls;
    entry *entries;
    entry *graveyard;
    lease *leases;
    release *releases;
    /* the watch stream */
    ls_http_request *stream;
    bool stream_wants_auth;
    char *in;
    size_t inlen;
    stream_frame frame; /* how far into `in` the next message is known */
    watch *buckets[WATCH_BUCKETS];
    unsigned nwatches;
    unsigned nleader_own; /* of them, leaders' watches of their own keys */
    int64_t next_watch_id;
    struct event *stream_timer;
    struct event *heartbeat;
    double last_data;   /* when the stream last brought anything */
    double progress_at; /* when a keep-alive last asked for a progress report */
    double opened_at;
    unsigned stream_failures;
    /* lifetime */
    int depth;
    bool closing;        /* the store object is gone */
    bool closed;         /* ... and the leases and stream are ended */
    unsigned background; /* revokes, releases and idle checks: they hold the loop */
};

static void enter(etcd *s) { s->depth++; }
static void leave(etcd *s);

/* Work that outlives the elections (a revoke, a key deletion) keeps
 * leadership.run() going until it is done. */
static void bg_begin(etcd *s)
{
    if (s->background++ == 0)
        ls_loop_hold();
}

static void bg_end(etcd *s)
{
    if (--s->background == 0)
        ls_loop_release();
}

/* ---- JSON helpers ---- */

/* An int64 field (the gateway sends them as strings; absent means 0).
 * False if present with the wrong type. */
static bool jint(json_t *obj, const char *name, int64_t *out)
{
    json_t *v = json_object_get(obj, name);
    *out = 0;
    if (!v)
        return true;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    if (!json_is_string(v))
        return false;
    char *end;
    const char *text = json_string_value(v);
    long long n = strtoll(text, &end, 10);
    if (end == text || *end)
        return false;
    *out = n;
    return true;
}

static json_t *jnum(int64_t n)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%" PRId64, n);
    return json_string(buf);
}

static json_t *jb64(const char *data, size_t len)
{
    char *enc = ls_base64_encode(data, len);
    json_t *j = json_string(enc);
    free(enc);
    return j;
}

static json_t *jb64s(const char *s) { return jb64(s, strlen(s)); }

/* The first byte string after every key starting with prefix. */
static char *prefix_end(const char *prefix)
{
    char *end = strdup(prefix);
    size_t n = strlen(end);
    end[n - 1]++; /* prefixes end in '/', never 0xff */
    return end;
}

/* A decoded key/value, checked. */
typedef struct kv {
    char *key;
    size_t key_len;
    char *value;
    size_t value_len;
    int64_t create_rev, mod_rev, lease;
} kv;

static void kv_free(kv *k)
{
    free(k->key);
    free(k->value);
    memset(k, 0, sizeof *k);
}

static bool kv_parse(json_t *j, kv *out)
{
    memset(out, 0, sizeof *out);
    if (!json_is_object(j))
        return false;
    json_t *key = json_object_get(j, "key"), *value = json_object_get(j, "value");
    if (!json_is_string(key) || (value && !json_is_string(value)))
        return false;
    out->key = ls_base64_decode(json_string_value(key), json_string_length(key), &out->key_len);
    if (value)
        out->value =
            ls_base64_decode(json_string_value(value), json_string_length(value), &out->value_len);
    else
        out->value = strdup("");
    if (!out->key || !out->value || !jint(j, "create_revision", &out->create_rev) ||
        !jint(j, "mod_revision", &out->mod_rev) || !jint(j, "lease", &out->lease)) {
        kv_free(out);
        return false;
    }
    return true;
}

/* responses[i].response_range.kvs[j] of a txn reply, if any: 1 found,
 * 0 none, -1 malformed. */
static int txn_kv(json_t *reply, size_t i, size_t j, kv *out)
{
    json_t *resp = json_array_get(json_object_get(reply, "responses"), i);
    json_t *range = json_object_get(resp, "response_range");
    if (!json_is_object(range))
        return -1;
    json_t *kvs = json_object_get(range, "kvs");
    if (kvs && !json_is_array(kvs))
        return -1;
    json_t *item = json_array_get(kvs, j);
    if (!item)
        return 0;
    return kv_parse(item, out) ? 1 : -1;
}

static bool header_revision(json_t *reply, int64_t *rev)
{
    json_t *header = json_object_get(reply, "header");
    /* watches start at revision + 1: the largest int64 is no revision */
    return json_is_object(header) && jint(header, "revision", rev) && *rev > 0 && *rev < INT64_MAX;
}

/* A RangeRequest over every key under prefix, by create_revision. */
static json_t *range_body(const char *prefix, bool descend, int64_t limit, int64_t max_create)
{
    char *end = prefix_end(prefix);
    json_t *r = json_pack("{s:o, s:o, s:s, s:s, s:o}", "key", jb64s(prefix), "range_end",
                          jb64s(end), "sort_target", "CREATE", "sort_order",
                          descend ? "DESCEND" : "ASCEND", "limit", jnum(limit));
    free(end);
    if (max_create > 0)
        json_object_set_new(r, "max_create_revision", jnum(max_create));
    return r;
}

/* The same as a txn operation. */
static json_t *range_op(const char *prefix, bool descend, int64_t limit, int64_t max_create)
{
    return json_pack("{s:o}", "request_range", range_body(prefix, descend, limit, max_create));
}

/* ---- endpoints and unary calls ---- */

static const char *host_of(etcd *s, size_t i)
{
    const char *url = s->endpoints[i];
    return strstr(url, "://") + 3;
}

/* The member at index `failed` let us down: later requests go to the next. */
static void endpoint_failed(etcd *s, size_t failed, const char *why)
{
    if (s->current != failed || s->nendpoints < 2)
        return;
    s->current = (failed + 1) % s->nendpoints;
    ls_log(LS_WARN, "etcd: member %s failed (%s); using %s", host_of(s, failed), why,
           host_of(s, s->current));
}

static void auth_start(etcd *s);
static void call_send(call *c);

static void call_free(call *c)
{
    etcd *s = c->s;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    ls_http_cancel(c->req);
    event_free(c->timer);
    free(c->path);
    free(c->body);
    free(c);
}

static void call_finish(call *c, json_t *reply, const char *err, double sent_at)
{
    etcd *s = c->s;
    call_fn fn = c->fn;
    void *ctx = c->ctx;
    c->req = NULL;
    call_free(c);
    enter(s);
    fn(ctx, reply, err, sent_at);
    leave(s);
}

static void call_retry_cb(evutil_socket_t fd, short what, void *arg) { call_send(arg); }

/* gRPC codes the gateway passes on: Unavailable, DeadlineExceeded. */
static bool retryable(long status, int64_t code)
{
    return status == 502 || status == 503 || status == 504 || code == 14 || code == 4;
}

static void call_done(void *arg, const ls_http_response *res)
{
    call *c = arg;
    etcd *s = c->s;
    c->req = NULL;
    char err[512], status_text[48];
    json_t *reply = NULL;
    int64_t code = 0;
    const char *message = NULL;
    if (!res->error) {
        json_error_t jerr;
        reply = json_loadb(res->body, res->len, 0, &jerr);
        if (!json_is_object(reply) && retryable(res->status, 0)) {
            /* a proxy's error page: try the next member */
            json_decref(reply);
            reply = NULL;
        } else if (!json_is_object(reply)) {
            snprintf(err, sizeof err, "etcd %s%s: malformed reply (HTTP %ld): %s",
                     host_of(s, c->endpoint), c->path, res->status,
                     reply ? "not a JSON object" : jerr.text);
            json_decref(reply);
            call_finish(c, NULL, err, res->sent_at);
            return;
        }
        /* a stream reply (lease keepalive) nests its error */
        json_t *error = json_object_get(reply, "error");
        if (json_is_object(error)) {
            jint(error, "grpc_code", &code);
            message = json_string_value(json_object_get(error, "message"));
        } else if (res->status != 200) {
            jint(reply, "code", &code);
            message = json_string_value(json_object_get(reply, "error"));
            if (!message)
                message = json_string_value(json_object_get(reply, "message"));
        }
        if (!message && res->status != 200) {
            snprintf(status_text, sizeof status_text, "unexpected HTTP status %ld", res->status);
            message = status_text;
        }
    }
    if (res->error || retryable(res->status, code)) {
        endpoint_failed(s, c->endpoint, res->error ? res->error : message);
        if (++c->attempts < (s->nendpoints > 2 ? s->nendpoints : 2) && !s->closing) {
            json_decref(reply);
            struct timeval tv = {0, 50000 * c->attempts};
            evtimer_add(c->timer, &tv);
            return;
        }
        snprintf(err, sizeof err, "etcd %s%s: %s", host_of(s, c->endpoint), c->path,
                 res->error ? res->error : message);
        json_decref(reply);
        call_finish(c, NULL, err, res->sent_at);
        return;
    }
    if (message) {
        /* Unauthenticated, no token, or one older than the last change of
         * users and roles */
        bool token_rejected = code == 16 || strstr(message, "invalid auth token") ||
                              strstr(message, "user name is empty") ||
                              strstr(message, "revision of auth store is old");
        if (token_rejected && s->user && !c->auth_retried) {
            /* tokens expire: get a new one and go again, once */
            ls_log(LS_INFO, "etcd: %s refused our token (%s); authenticating again",
                   host_of(s, c->endpoint), message);
            c->auth_retried = true;
            free(s->token);
            s->token = NULL;
            json_decref(reply);
            call_send(c);
            return;
        }
        if (token_rejected && !s->user)
            snprintf(err, sizeof err,
                     "etcd %s%s: %s (the server wants authentication: set auth.username and "
                     "auth.password)",
                     host_of(s, c->endpoint), c->path, message);
        else
            snprintf(err, sizeof err, "etcd %s%s: %s", host_of(s, c->endpoint), c->path, message);
        json_decref(reply);
        call_finish(c, NULL, err, res->sent_at);
        return;
    }
    call_finish(c, reply, NULL, res->sent_at);
    json_decref(reply);
}

static const char **request_headers(etcd *s, const char *buf[3], char *auth, size_t authlen)
{
    buf[0] = "Content-Type: application/json";
    buf[1] = NULL;
    buf[2] = NULL;
    if (s->token) {
        snprintf(auth, authlen, "Authorization: %s", s->token);
        buf[1] = auth;
    }
    return buf;
}

static void call_send(call *c)
{
    etcd *s = c->s;
    if (s->user && !s->token) {
        c->waiting_auth = true;
        auth_start(s);
        return;
    }
    c->waiting_auth = false;
    c->endpoint = s->current;
    /* tokens have no fixed length: a JWT signed with RSA-4096 is 800 bytes */
    size_t authlen = 32 + (s->token ? strlen(s->token) : 0);
    char url[600], *auth = malloc(authlen);
    const char *headers[3];
    snprintf(url, sizeof url, "%s%s", s->endpoints[c->endpoint], c->path);
    c->req = ls_http_send(c->via, "POST", url, request_headers(s, headers, auth, authlen), c->body,
                          strlen(c->body), c->timeout, call_done, c);
    free(auth);
    if (!c->req) {
        /* libcurl refused to set it up: try again shortly */
        struct timeval tv = {0, 200000};
        evtimer_add(c->timer, &tv);
    }
}

/* Sends body (taken) to path, each attempt given timeout seconds before
 * the next member is tried; fn(ctx, ...) once, unless call_cancel. */
static call *call_start_within(etcd *s, const char *path, json_t *body, call_fn fn, void *ctx,
                               double timeout)
{
    call *c = calloc(1, sizeof *c);
    c->s = s;
    c->timeout = timeout;
    c->path = strdup(path);
    c->body = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    c->fn = fn;
    c->ctx = ctx;
    c->via = strcmp(path, "/v3/lease/keepalive") ? s->http : s->lease_http;
    c->timer = evtimer_new(ls_loop_base(), call_retry_cb, c);
    c->next = s->calls;
    if (c->next)
        c->next->prev = c;
    s->calls = c;
    call_send(c);
    return c;
}

/* The same with the store's timeout. */
static call *call_start(etcd *s, const char *path, json_t *body, call_fn fn, void *ctx)
{
    return call_start_within(s, path, body, fn, ctx, s->timeout);
}

static void call_cancel(call *c)
{
    if (c)
        call_free(c);
}

/* ---- authentication ---- */

static void stream_open(etcd *s);

static void auth_done(void *arg, const ls_http_response *res)
{
    etcd *s = arg;
    s->auth_req = NULL;
    char err[512] = "";
    json_t *reply = NULL;
    if (res->error) {
        endpoint_failed(s, s->current, res->error);
        snprintf(err, sizeof err, "etcd: authentication as user '%s' failed: %s", s->user,
                 res->error);
    } else {
        reply = json_loadb(res->body, res->len, 0, NULL);
        const char *token = json_string_value(json_object_get(reply, "token"));
        if (res->status == 200 && token && *token) {
            free(s->token);
            s->token = strdup(token);
        } else {
            const char *msg = json_string_value(json_object_get(reply, "error"));
            snprintf(err, sizeof err, "etcd: authentication as user '%s' failed: %s", s->user,
                     msg ? msg : "malformed reply");
        }
    }
    json_decref(reply);
    enter(s);
    /* everyone who waited goes now, or fails with the reason */
    for (call *c = s->calls; c; c = c->next) {
        if (c->waiting_auth && s->token)
            call_send(c); /* runs no callback */
        else if (c->waiting_auth)
            c->auth_failed = true;
    }
    /* a failure report may end other calls: look them up afresh each time */
    for (;;) {
        call *c = s->calls;
        while (c && !c->auth_failed)
            c = c->next;
        if (!c)
            break;
        call_finish(c, NULL, err, res->sent_at);
    }
    if (s->stream_wants_auth && !s->closing) {
        s->stream_wants_auth = false;
        if (s->token) {
            stream_open(s);
        } else {
            struct timeval tv = {1, 0};
            evtimer_add(s->stream_timer, &tv);
        }
    }
    leave(s);
}

static void auth_start(etcd *s)
{
    if (s->auth_req)
        return;
    json_t *body = json_pack("{s:s, s:s}", "name", s->user, "password", s->password);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    char url[600];
    const char *headers[] = {"Content-Type: application/json", NULL};
    snprintf(url, sizeof url, "%s/v3/auth/authenticate", s->endpoints[s->current]);
    s->auth_req =
        ls_http_send(s->http, "POST", url, headers, text, strlen(text), s->timeout, auth_done, s);
    /* the body held the password: don't leave it in freed memory */
    memset(text, 0, strlen(text));
    free(text);
}

/* ---- the watch stream ---- */

static watch **bucket_of(etcd *s, int64_t id) { return &s->buckets[(uint64_t)id % WATCH_BUCKETS]; }

static watch *watch_find(etcd *s, int64_t id)
{
    for (watch *w = *bucket_of(s, id); w; w = w->bucket_next)
        if (w->id == id)
            return w;
    return NULL;
}

static void stream_write_json(etcd *s, json_t *msg)
{
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    size_t n = strlen(text);
    text = realloc(text, n + 2);
    text[n] = '\n';
    ls_http_stream_write(s->stream, text, n + 1);
    free(text);
}

/* The heartbeat runs only while a follower or a waiting candidate watches:
 * a leader's watch of its own key is checked with each lease keep-alive
 * instead (stream_ride_keepalive), so an idle leader wakes for its
 * keep-alives alone. */
static void heartbeat_next(etcd *s)
{
    struct timeval beat = {(time_t)STREAM_HEARTBEAT,
                           (suseconds_t)((STREAM_HEARTBEAT - (time_t)STREAM_HEARTBEAT) * 1e6)};
    evtimer_add(s->heartbeat, &beat);
}

static void heartbeat_arm(etcd *s)
{
    if (!s->stream || s->nwatches == s->nleader_own || evtimer_pending(s->heartbeat, NULL))
        return;
    s->last_data = ls_now(); /* silence while idle says nothing */
    heartbeat_next(s);
}

static void watch_send_create(watch *w)
{
    etcd *s = w->s;
    json_t *req = json_pack("{s:s, s:o, s:o}", "key", w->key, "start_revision", jnum(w->next_rev),
                            "watch_id", jnum(w->id));
    if (w->range_end)
        json_object_set_new(req, "range_end", json_string(w->range_end));
    if (w->noput)
        json_object_set_new(req, "filters", json_pack("[s]", "NOPUT"));
    stream_write_json(s, json_pack("{s:o}", "create_request", req));
    heartbeat_arm(s);
}

static void stream_data(void *arg, const char *data, size_t len);
static void stream_done(void *arg, const ls_http_response *res);

static void stream_open(etcd *s)
{
    if (s->stream || s->closing)
        return;
    if (s->user && !s->token) {
        s->stream_wants_auth = true;
        auth_start(s);
        return;
    }
    size_t authlen = 32 + (s->token ? strlen(s->token) : 0);
    char url[600], *auth = malloc(authlen);
    const char *headers[4];
    request_headers(s, headers, auth, authlen);
    /* a member cut off from the cluster's leader ends the stream, rather
     * than leaving our watches silently stale */
    headers[headers[1] ? 2 : 1] = "Grpc-Metadata-Hasleader: true";
    headers[3] = NULL;
    snprintf(url, sizeof url, "%s/v3/watch", s->endpoints[s->current]);
    s->stream = ls_http_stream(s->watch_http, url, headers, stream_data, stream_done, s);
    free(auth);
    s->inlen = 0;
    s->frame = (stream_frame){0};
    s->last_data = s->opened_at = ls_now();
    if (!s->stream) {
        struct timeval tv = {1, 0};
        evtimer_add(s->stream_timer, &tv);
        return;
    }
    for (size_t b = 0; b < WATCH_BUCKETS; b++)
        for (watch *w = s->buckets[b]; w; w = w->bucket_next)
            watch_send_create(w);
}

static void stream_broken(etcd *s, const char *why);

static void heartbeat_cb(evutil_socket_t fd, short what, void *arg)
{
    etcd *s = arg;
    if (!s->stream)
        return;
    enter(s);
    if (ls_now() - s->last_data > STREAM_SILENCE) {
        stream_broken(s, "no answer from the member");
    } else if (s->nwatches > s->nleader_own) {
        stream_write_json(s, json_pack("{s:{}}", "progress_request"));
        heartbeat_next(s);
    }
    leave(s);
}

/* With a lease keep-alive, while only leaders' own watches use the stream:
 * asks for a progress report, and counts the stream lost once one has gone
 * unanswered for STREAM_SILENCE. */
static void stream_ride_keepalive(etcd *s)
{
    if (!s->stream || s->nwatches == 0 || evtimer_pending(s->heartbeat, NULL))
        return; /* nothing to check, or the heartbeat does it */
    double now = ls_now();
    bool unanswered = s->progress_at > s->last_data;
    if (unanswered && now - s->progress_at > STREAM_SILENCE) {
        stream_broken(s, "no answer from the member");
        return;
    }
    stream_write_json(s, json_pack("{s:{}}", "progress_request"));
    if (!unanswered)
        s->progress_at = now; /* the silence counts from the first unanswered one */
}

static void stream_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    etcd *s = arg;
    enter(s);
    stream_open(s);
    leave(s);
}

/* The stream broke: every watch hears of it, and we reconnect. */
static void stream_broken(etcd *s, const char *why)
{
    ls_http_cancel(s->stream);
    s->stream = NULL;
    s->inlen = 0;
    s->frame = (stream_frame){0};
    evtimer_del(s->heartbeat);
    if (s->closing)
        return;
    endpoint_failed(s, s->current, why);
    s->stream_failures++;
    ls_log(LS_WARN, "etcd: watch stream to %s broke: %s", host_of(s, s->current), why);
    double delay = 0.05 * (1 << (s->stream_failures < 6 ? s->stream_failures : 6));
    struct timeval tv = {(time_t)delay, (suseconds_t)((delay - (time_t)delay) * 1e6)};
    evtimer_add(s->stream_timer, &tv);
    char msg[600];
    snprintf(msg, sizeof msg, "etcd: watch stream broke (%s); reconnecting", why);
    /* copy the ids: a report may stop watches */
    int64_t *ids = malloc((s->nwatches + 1) * sizeof *ids);
    size_t n = 0;
    for (size_t b = 0; b < WATCH_BUCKETS; b++)
        for (watch *w = s->buckets[b]; w; w = w->bucket_next)
            ids[n++] = w->id;
    for (size_t i = 0; i < n; i++) {
        watch *w = watch_find(s, ids[i]);
        if (w && s->stream_failures > 1)
            w->fn(w->ctx, WATCH_FAILED, NULL, msg);
    }
    free(ids);
}

static void stream_message(etcd *s, json_t *msg)
{
    json_t *result = json_object_get(msg, "result");
    if (!json_is_object(result)) {
        /* a stream error nests it, a refused request does not */
        json_t *error = json_object_get(msg, "error");
        const char *text = json_is_string(error)
                               ? json_string_value(error)
                               : json_string_value(json_object_get(error, "message"));
        if (text && s->user && strstr(text, "auth token")) {
            free(s->token); /* the reconnect authenticates again */
            s->token = NULL;
        }
        char why[300];
        snprintf(why, sizeof why, "%s", text ? text : "malformed message");
        stream_broken(s, why);
        return;
    }
    int64_t id, compact;
    json_t *events = json_object_get(result, "events");
    if (!jint(result, "watch_id", &id) || !jint(result, "compact_revision", &compact) ||
        (events && !json_is_array(events))) {
        stream_broken(s, "malformed watch response");
        return;
    }
    /* a stream that stays up a while is healthy again: reconnect quickly
     * next time; one that breaks at once keeps backing off */
    if (ls_now() - s->opened_at > 5)
        s->stream_failures = 0;
    watch *w = watch_find(s, id);
    if (!w)
        return; /* a watch we stopped, or one the server refused before it had an id */
    if (json_is_true(json_object_get(result, "canceled"))) {
        const char *reason = json_string_value(json_object_get(result, "cancel_reason"));
        char err[300];
        snprintf(err, sizeof err, "etcd: watch cancelled by the server: %s",
                 reason ? reason : "no reason given");
        if (compact > 0)
            w->fn(w->ctx, WATCH_COMPACTED, NULL, NULL);
        else
            w->fn(w->ctx, WATCH_CANCELLED, NULL, err);
        return;
    }
    size_t n = json_array_size(events);
    if (n == 0)
        return;
    for (size_t i = 0; i < n; i++) {
        int64_t mod;
        /* the largest int64 is no revision: the resume point is mod + 1 */
        if (!jint(json_object_get(json_array_get(events, i), "kv"), "mod_revision", &mod) ||
            mod == INT64_MAX) {
            stream_broken(s, "malformed watch event");
            return;
        }
        if (mod >= w->next_rev)
            w->next_rev = mod + 1;
    }
    w->fn(w->ctx, WATCH_EVENTS, events, NULL);
}

/* Finds where the message at the front of the stream buffer ends, going
 * on from where the last call stopped, so each byte is looked at once
 * (parsing the unfinished message again on every chunk is quadratic, and
 * a chunk may end inside a UTF-8 character, which jansson calls invalid,
 * not unfinished). 1: it ends at f->end; 0: the rest is on its way; -1:
 * the stream holds no JSON object or array there. */
static int frame_next(stream_frame *f, const char *in, size_t len)
{
    for (; f->end < len; f->end++) {
        char c = in[f->end];
        if (f->in_string) {
            if (f->escaped)
                f->escaped = false;
            else if (c == '\\')
                f->escaped = true;
            else if (c == '"')
                f->in_string = false;
        } else if (c == '"') {
            if (f->depth == 0)
                return -1;
            f->in_string = true;
        } else if (c == '{' || c == '[') {
            f->depth++;
        } else if (c == '}' || c == ']') {
            if (f->depth == 0)
                return -1;
            if (--f->depth == 0) {
                f->end++;
                return 1;
            }
        } else if (f->depth == 0 && c != ' ' && c != '\t' && c != '\r' && c != '\n') {
            return -1;
        }
    }
    return 0;
}

/* Ours watch one election's keys: a message of theirs is a few events. */
#define MAX_WATCH_MESSAGE_MB 64

static void stream_data(void *arg, const char *data, size_t len)
{
    etcd *s = arg;
    enter(s);
    s->last_data = ls_now();
    s->in = realloc(s->in, s->inlen + len + 1);
    memcpy(s->in + s->inlen, data, len);
    s->inlen += len;
    size_t off = 0;
    ls_http_request *stream = s->stream;
    while (s->stream == stream) {
        int framed = frame_next(&s->frame, s->in, s->inlen);
        if (framed == 0)
            break;
        json_error_t jerr;
        json_t *msg = framed > 0 ? json_loadb(s->in + off, s->frame.end - off, 0, &jerr) : NULL;
        if (!msg) {
            char why[300];
            snprintf(why, sizeof why, "malformed JSON: %s",
                     framed > 0 ? jerr.text : "no object where a message starts");
            stream_broken(s, why);
            break;
        }
        off = s->frame.end;
        stream_message(s, msg);
        json_decref(msg);
    }
    if (s->stream == stream && off > 0) {
        memmove(s->in, s->in + off, s->inlen - off);
        s->inlen -= off;
        s->frame.end -= off;
    }
    /* a message that never ends would take all the memory there is */
    if (s->stream == stream && s->inlen > (size_t)MAX_WATCH_MESSAGE_MB << 20) {
        char why[64];
        snprintf(why, sizeof why, "a watch message over %d MB", MAX_WATCH_MESSAGE_MB);
        stream_broken(s, why);
    }
    leave(s);
}

static void stream_done(void *arg, const ls_http_response *res)
{
    etcd *s = arg;
    s->stream = NULL;
    enter(s);
    char why[300];
    if (res->error)
        snprintf(why, sizeof why, "%s", res->error);
    else
        snprintf(why, sizeof why, "closed by the server (HTTP %ld)", res->status);
    stream_broken(s, why);
    leave(s);
}

static watch *watch_start(etcd *s, const char *key, const char *range_end, int64_t start_rev,
                          bool noput, bool leader_own, watch_fn fn, void *ctx)
{
    watch *w = calloc(1, sizeof *w);
    w->s = s;
    w->id = ++s->next_watch_id;
    char *k = ls_base64_encode(key, strlen(key));
    w->key = k;
    w->range_end = range_end ? ls_base64_encode(range_end, strlen(range_end)) : NULL;
    w->next_rev = start_rev;
    w->noput = noput;
    w->leader_own = leader_own;
    w->fn = fn;
    w->ctx = ctx;
    watch **b = bucket_of(s, w->id);
    w->bucket_next = *b;
    *b = w;
    s->nwatches++;
    s->nleader_own += leader_own;
    if (s->stream)
        watch_send_create(w);
    else if (!evtimer_pending(s->stream_timer, NULL))
        stream_open(s);
    return w;
}

static void watch_stop(watch *w)
{
    if (!w)
        return;
    etcd *s = w->s;
    watch **p = bucket_of(s, w->id);
    while (*p != w)
        p = &(*p)->bucket_next;
    *p = w->bucket_next;
    s->nwatches--;
    s->nleader_own -= w->leader_own;
    if (s->stream)
        stream_write_json(s, json_pack("{s:{s:o}}", "cancel_request", "watch_id", jnum(w->id)));
    free(w->key);
    free(w->range_end);
    free(w);
}

/* ---- leases ---- */

static void entry_campaign(entry *en);
static void entry_fail(entry *en, const char *message);
static void entry_create(entry *en);
static void lease_keepalive(lease *l);
static void lease_grant(lease *l);

static void lease_schedule(lease *l, double seconds)
{
    if (seconds < 0)
        seconds = 0;
    struct timeval tv = {(time_t)seconds, (suseconds_t)((seconds - (time_t)seconds) * 1e6)};
    evtimer_add(l->timer, &tv);
}

/* The shortest renew period of the elections on l (all of its ttl): two
 * keepalives fall within every one's deadline. */
static double lease_period(const lease *l)
{
    double period = l->ttl / 3;
    for (const entry *en = l->entries; en; en = en->lease_next)
        if (en->e && ls_renew_period(ls_election_view(en->e)) < period)
            period = ls_renew_period(ls_election_view(en->e));
    return period;
}

/* How long a grant or keepalive of l may wait on one member. A leader's
 * deadline is renew_deadline (at least two periods) after the last
 * acknowledged keepalive, and the next is sent a period after it: a
 * member that hangs rather than refuses may have half the period, so
 * that the retry on the next one still answers in time. The store's
 * timeout (5 s by default) would outlast the deadline of any ttl up to
 * 15 s. */
static double lease_call_timeout(const lease *l)
{
    double half = lease_period(l) / 2, store = l->s->timeout;
    return store > 0 && store < half ? store : half;
}

/* The entries on l now: a report may cancel any of them, which unlinks it
 * (but frees it only later, see leave), so loops run over a copy. */
static entry **lease_snapshot(lease *l, size_t *n)
{
    entry **list = malloc((l->users + 1) * sizeof *list);
    *n = 0;
    for (entry *en = l->entries; en; en = en->lease_next)
        list[(*n)++] = en;
    return list;
}

static void entry_unwatch(entry *en)
{
    watch_stop(en->watch);
    en->watch = NULL;
}

static void unwait(entry *en)
{
    if (en->state != E_WAIT_RELEASE)
        return;
    for (release *r = en->s->releases; r; r = r->next)
        if (r->waiter == en)
            r->waiter = NULL;
}

/* The lease is gone (expired or revoked): every candidate on it loses and
 * starts over on a new one. */
static void lease_dead(lease *l, const char *why)
{
    etcd *s = l->s;
    ls_log(LS_WARN, "etcd: lease %" PRIx64 " (ttl %g s) is gone: %s", (uint64_t)l->id, l->ttl, why);
    l->alive = false;
    l->id = 0;
    l->probe = false;
    evtimer_del(l->timer);
    call_cancel(l->call);
    l->call = NULL;
    enter(s);
    size_t n;
    entry **list = lease_snapshot(l, &n);
    bool *led = calloc(n + 1, sizeof *led);
    for (size_t i = 0; i < n; i++) {
        entry *en = list[i];
        led[i] = en->state == E_LEADER;
        call_cancel(en->call);
        en->call = NULL;
        entry_unwatch(en);
        en->key_gone = false;
        unwait(en);
        en->state = E_WAIT_LEASE;
    }
    for (size_t i = 0; i < n; i++) {
        entry *en = list[i];
        if (led[i] && !en->dead && en->state == E_WAIT_LEASE)
            ls_election_lost(en->e, "session");
    }
    /* the reports may have cancelled some; the rest go again */
    if (!s->closing && l->users > 0) {
        lease_grant(l);
    }
    free(led);
    free(list);
    leave(s);
}

/* Whole seconds, as etcd takes them. */
static int64_t lease_ttl_asked(const lease *l) { return (int64_t)ceil(l->ttl); }

static void lease_granted(void *arg, json_t *reply, const char *err, double sent_at)
{
    lease *l = arg;
    etcd *s = l->s;
    l->call = NULL;
    int64_t id = 0, ttl = 0;
    char msg[600];
    if (!err && (!jint(reply, "ID", &id) || !jint(reply, "TTL", &ttl) || id == 0 || ttl <= 0)) {
        snprintf(msg, sizeof msg, "etcd: malformed reply to a lease grant");
        err = msg;
    } else if (!err && ttl < lease_ttl_asked(l)) {
        snprintf(msg, sizeof msg,
                 "etcd: lease granted for %" PRId64 " s, shorter than the %" PRId64
                 " s asked: our deadline would outlast it",
                 ttl, lease_ttl_asked(l));
        err = msg;
    }
    size_t n;
    entry **list = lease_snapshot(l, &n);
    if (err) {
        /* everyone waiting fails; the engine's backoff brings them back */
        for (size_t i = 0; i < n; i++)
            if (!list[i]->dead && list[i]->state == E_WAIT_LEASE)
                entry_fail(list[i], err);
        free(list);
        return;
    }
    l->id = id;
    l->alive = true;
    l->valid_from = sent_at;
    ls_log(LS_DEBUG, "etcd: lease %" PRIx64 " granted (ttl %" PRId64 " s)", (uint64_t)id, ttl);
    lease_schedule(l, sent_at + lease_period(l) - ls_now());
    for (size_t i = 0; i < n && !s->closing; i++)
        if (!list[i]->dead && list[i]->state == E_WAIT_LEASE)
            entry_campaign(list[i]);
    free(list);
}

static void lease_grant(lease *l)
{
    if (l->call)
        return;
    json_t *body = json_pack("{s:I}", "TTL", (json_int_t)lease_ttl_asked(l));
    l->call =
        call_start_within(l->s, "/v3/lease/grant", body, lease_granted, l, lease_call_timeout(l));
}

static void lease_kept(void *arg, json_t *reply, const char *err, double sent_at)
{
    lease *l = arg;
    etcd *s = l->s;
    l->call = NULL;
    int64_t ttl = 0;
    json_t *result = reply ? json_object_get(reply, "result") : NULL;
    char msg[600];
    if (!err && (!json_is_object(result) || !jint(result, "TTL", &ttl))) {
        snprintf(msg, sizeof msg, "etcd: malformed reply to a lease keepalive");
        err = msg;
    } else if (!err && ttl > 0 && ttl < lease_ttl_asked(l)) {
        /* etcd renews to the full ttl granted: a shorter one is no renewal
         * our deadline can rest on */
        snprintf(msg, sizeof msg,
                 "etcd: lease kept alive for %" PRId64 " s, shorter than the %" PRId64
                 " s asked: our deadline would outlast it",
                 ttl, lease_ttl_asked(l));
        err = msg;
    }
    if (err) {
        ls_log(LS_WARN, "etcd: keepalive of lease %" PRIx64 " failed: %s", (uint64_t)l->id, err);
        size_t n;
        entry **list = lease_snapshot(l, &n);
        for (size_t i = 0; i < n; i++)
            if (!list[i]->dead && list[i]->state == E_LEADER)
                ls_election_error(list[i]->e, err);
        free(list);
        /* again soon: the lease may still be saved */
        lease_schedule(l, lease_period(l) * 0.3);
        return;
    }
    if (ttl <= 0) {
        lease_dead(l, "etcd no longer knows it (expired or revoked)");
        return;
    }
    l->valid_from = sent_at;
    if (l->probe)
        lease_schedule(l, 0); /* someone asked after this one was sent */
    else
        lease_schedule(l, sent_at + lease_period(l) - ls_now());
    size_t n;
    entry **list = lease_snapshot(l, &n);
    for (size_t i = 0; i < n && !s->closing; i++) {
        entry *en = list[i];
        if (en->dead)
            continue;
        if (en->state == E_WAIT_LEASE) {
            entry_campaign(en); /* it waited for this keepalive */
            continue;
        }
        if (en->state != E_LEADER)
            continue;
        if (!en->key_gone) {
            ls_election_renewed(en->e, sent_at);
        } else if (sent_at > en->gone_at) {
            /* the lease outlived our key: it was deleted behind our back */
            en->key_gone = false;
            entry_unwatch(en);
            /* a re-check after a compaction may be in flight: its reply
             * must not come to an entry that has moved on (or is freed) */
            call_cancel(en->call);
            en->call = NULL;
            en->state = E_WAIT_LEASE;
            ls_election_lost(en->e, "deleted");
            if (!en->dead)
                entry_campaign(en);
        }
    }
    free(list);
}

static void lease_keepalive(lease *l)
{
    if (l->call || !l->alive)
        return;
    l->probe = false;
    json_t *body = json_pack("{s:o}", "ID", jnum(l->id));
    l->call =
        call_start_within(l->s, "/v3/lease/keepalive", body, lease_kept, l, lease_call_timeout(l));
}

static void lease_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    lease *l = arg;
    etcd *s = l->s;
    enter(s);
    lease_keepalive(l);
    stream_ride_keepalive(s); /* last: its reports may free l */
    leave(s);
}

static void lease_free(lease *l)
{
    etcd *s = l->s;
    for (lease **p = &s->leases; *p; p = &(*p)->next) {
        if (*p == l) {
            *p = l->next;
            break;
        }
    }
    call_cancel(l->call);
    if (l->idle_armed)
        bg_end(s);
    event_free(l->timer);
    event_free(l->idle);
    free(l);
}

static void lease_revoked(void *arg, json_t *reply, const char *err, double sent_at)
{
    etcd *s = arg;
    if (err)
        ls_log(LS_WARN, "etcd: revoking a lease failed (it expires by itself): %s", err);
    bg_end(s);
}

/* Nobody uses l: revoke it so its keys go at once, and forget it. */
static void lease_retire(lease *l)
{
    etcd *s = l->s;
    if (l->alive && l->id) {
        bg_begin(s);
        call_start(s, "/v3/lease/revoke", json_pack("{s:o}", "ID", jnum(l->id)), lease_revoked, s);
    }
    lease_free(l);
}

static void lease_idle_cb(evutil_socket_t fd, short what, void *arg)
{
    lease *l = arg;
    etcd *s = l->s;
    enter(s);
    l->idle_armed = false;
    bg_end(s);
    if (l->users == 0)
        lease_retire(l);
    leave(s);
}

static lease *lease_attach(etcd *s, entry *en, double ttl)
{
    lease *l = s->leases;
    while (l && l->ttl != ttl)
        l = l->next;
    if (!l) {
        l = calloc(1, sizeof *l);
        l->s = s;
        l->ttl = ttl;
        l->timer = evtimer_new(ls_loop_base(), lease_timer_cb, l);
        l->idle = evtimer_new(ls_loop_base(), lease_idle_cb, l);
        l->next = s->leases;
        s->leases = l;
    }
    double period_before = lease_period(l);
    l->users++;
    en->lease = l;
    en->lease_next = l->entries;
    if (en->lease_next)
        en->lease_next->lease_prev = en;
    l->entries = en;
    /* a shorter renew_deadline joining a lease kept alive brings the next
     * keepalive forward (an answer due reschedules by itself) */
    if (l->alive && !l->call && lease_period(l) < period_before)
        lease_schedule(l, l->valid_from + lease_period(l) - ls_now());
    return l;
}

static void lease_detach(entry *en)
{
    lease *l = en->lease;
    if (!l)
        return;
    if (en->lease_prev)
        en->lease_prev->lease_next = en->lease_next;
    else
        l->entries = en->lease_next;
    if (en->lease_next)
        en->lease_next->lease_prev = en->lease_prev;
    en->lease = NULL;
    en->lease_prev = en->lease_next = NULL;
    if (--l->users == 0 && !l->idle_armed) {
        /* a resign cancels and campaigns in one go: keep the lease if so */
        struct timeval zero = {0, 0};
        l->idle_armed = true;
        bg_begin(l->s);
        evtimer_add(l->idle, &zero);
    }
}

/* ---- releases: deleting a cancelled candidate's key ---- */

static release *release_find(etcd *s, const char *name)
{
    for (release *r = s->releases; r; r = r->next)
        if (!strcmp(r->name, name))
            return r;
    return NULL;
}

static void release_delete(release *r);

static void release_end(release *r)
{
    etcd *s = r->s;
    for (release **p = &s->releases; *p; p = &(*p)->next) {
        if (*p == r) {
            *p = r->next;
            break;
        }
    }
    entry *waiter = r->waiter;
    event_free(r->timer);
    free(r->name);
    free(r);
    if (waiter && !waiter->dead && waiter->state == E_WAIT_RELEASE)
        entry_create(waiter);
    bg_end(s);
}

/* Is lease `id` still kept alive by this store? */
static bool lease_lives(etcd *s, int64_t id)
{
    for (lease *l = s->leases; l; l = l->next)
        if (l->alive && l->id == id)
            return true;
    return false;
}

static void release_deleted(void *arg, json_t *reply, const char *err, double sent_at)
{
    release *r = arg;
    r->call = NULL;
    /* a lease other elections keep alive would keep the key, and with it
     * the leadership, for good: no giving up on it (etcd restarting) */
    if (err && !r->s->closing && (++r->attempts < 5 || lease_lives(r->s, r->lease_id))) {
        if (r->attempts == 5)
            ls_log(LS_WARN,
                   "etcd: could not delete key '%s' yet, trying on while its lease lives: %s",
                   r->name, err);
        double delay = 0.2 * (r->attempts < 5 ? r->attempts : 5);
        struct timeval tv = {(time_t)delay, (suseconds_t)((delay - (time_t)delay) * 1e6)};
        evtimer_add(r->timer, &tv);
        return;
    }
    if (err)
        ls_log(LS_WARN, "etcd: could not delete key '%s' (it goes with its lease): %s", r->name,
               err);
    release_end(r);
}

static void release_delete(release *r)
{
    r->call = call_start(r->s, "/v3/kv/deleterange", json_pack("{s:o}", "key", jb64s(r->name)),
                         release_deleted, r);
}

static void release_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    release *r = arg;
    enter(r->s);
    release_delete(r);
    leave(r->s);
}

/* The create txn of a cancelled candidate finished: now delete its key,
 * which that txn may or may not have made. */
static void release_after_create(void *arg, json_t *reply, const char *err, double sent_at)
{
    release *r = arg;
    r->call = NULL;
    release_delete(r);
}

/* Starts deleting name. If `pending` (a create of that key in flight) is
 * given, the deletion waits for it, so the two cannot pass each other on
 * different connections. */
static void release_start(etcd *s, const char *name, int64_t lease_id, call *pending)
{
    release *r = calloc(1, sizeof *r);
    r->s = s;
    r->name = strdup(name);
    r->lease_id = lease_id;
    r->timer = evtimer_new(ls_loop_base(), release_timer_cb, r);
    r->next = s->releases;
    s->releases = r;
    bg_begin(s);
    if (pending) {
        pending->fn = release_after_create;
        pending->ctx = r;
        r->call = pending;
    } else {
        release_delete(r);
    }
}

/* ---- elections ---- */

static void report_leader(entry *en, const kv *leader)
{
    if (leader)
        ls_election_leader(en->e, leader->value, leader->value_len, (uint64_t)leader->create_rev);
    else
        ls_election_leader(en->e, NULL, 0, 0);
}

static void entry_unlink(entry *en)
{
    etcd *s = en->s;
    if (en->prev)
        en->prev->next = en->next;
    else if (s->entries == en)
        s->entries = en->next;
    if (en->next)
        en->next->prev = en->prev;
    en->prev = en->next = NULL;
}

/* Ends en without any further report; its key, if it may have one, is
 * deleted in the background. */
static void entry_end(entry *en)
{
    etcd *s = en->s;
    if (en->dead)
        return;
    en->dead = true;
    if (en->e)
        ls_election_view(en->e)->backend_data = NULL;
    en->e = NULL;
    entry_unwatch(en);
    if (en->candidate && en->name && en->lease && en->lease->alive) {
        if (en->state == E_CREATING)
            release_start(s, en->name, en->lease->id, en->call); /* takes the call over */
        else if (en->state == E_CHECKING || en->state == E_WAITING || en->state == E_LEADER)
            release_start(s, en->name, en->lease->id, NULL);
        if (en->state == E_CREATING)
            en->call = NULL;
    }
    call_cancel(en->call);
    en->call = NULL;
    unwait(en);
    lease_detach(en);
    entry_unlink(en);
    en->grave_next = s->graveyard;
    s->graveyard = en;
}

static void entry_free(entry *en)
{
    free(en->prefix);
    free(en->name);
    free(en->leader_key);
    free(en);
}

/* The attempt is over: the engine backs off and comes back. */
static void entry_fail(entry *en, const char *message)
{
    ls_election *e = en->e;
    enter(en->s);
    entry_end(en);
    if (e)
        ls_election_failed(e, message);
    leave(en->s);
}

static void entry_fail_malformed(entry *en, const char *what)
{
    char msg[300];
    snprintf(msg, sizeof msg, "etcd: malformed reply to %s", what);
    entry_fail(en, msg);
}

static void entry_check(entry *en);

/* A leader's key is gone: the lease decides whether that was the lease
 * ("session") or someone deleting it ("deleted"), by a keepalive sent
 * from now on. Until then no renewal counts for it. */
static void key_gone(entry *en)
{
    lease *l = en->lease;
    en->key_gone = true;
    en->gone_at = ls_now();
    if (l->call)
        l->probe = true;
    else
        lease_keepalive(l);
}

/* What every watch of an entry does first: nothing once the entry is
 * dead; a broken stream is reported (the watch resumes on reconnect); a
 * cancelled watch fails the entry (the engine's backoff, then all anew).
 * True when that settled the event. */
static bool watch_settled(entry *en, watch_kind kind, const char *err)
{
    if (en->dead)
        return true;
    if (kind == WATCH_FAILED) {
        ls_election_error(en->e, err);
        return true;
    }
    if (kind == WATCH_CANCELLED) {
        entry_fail(en, err);
        return true;
    }
    return false;
}

static void leader_watch_cb(void *ctx, watch_kind kind, json_t *events, const char *err)
{
    entry *en = ctx;
    if (watch_settled(en, kind, err))
        return;
    /* deleted, or history compacted past our start: either way, ask the
     * lease whether it lives; if so, our key is gone */
    if (kind == WATCH_EVENTS) {
        bool deleted = false;
        for (size_t i = 0; i < json_array_size(events); i++) {
            const char *type =
                json_string_value(json_object_get(json_array_get(events, i), "type"));
            if (type && !strcmp(type, "DELETE"))
                deleted = true;
        }
        if (!deleted)
            return;
        key_gone(en);
    } else {
        entry_unwatch(en);
        entry_check(en);
    }
}

static void predecessor_watch_cb(void *ctx, watch_kind kind, json_t *events, const char *err)
{
    entry *en = ctx;
    if (watch_settled(en, kind, err))
        return;
    entry_unwatch(en);
    entry_check(en);
}

/* We know our place: lead if nobody is before us, else watch the one key
 * just before ours. `at` is the revision the answer was read at. */
static void entry_decide(entry *en, const kv *leader, const kv *pred, int64_t at)
{
    if (!pred) {
        en->state = E_LEADER;
        en->watch = watch_start(en->s, en->name, NULL, at + 1, true, true, leader_watch_cb, en);
        /* the key lives only as long as the lease, which was last proven
         * alive by the keepalive sent at valid_from */
        ls_election_acquired(en->e, (uint64_t)en->rev, en->lease->valid_from);
        return;
    }
    en->state = E_WAITING;
    char *pred_key = strndup(pred->key, pred->key_len);
    en->watch = watch_start(en->s, pred_key, NULL, at + 1, true, false, predecessor_watch_cb, en);
    free(pred_key);
    report_leader(en, leader);
}

static void entry_checked(void *ctx, json_t *reply, const char *err, double sent_at)
{
    entry *en = ctx;
    en->call = NULL;
    if (err) {
        entry_fail(en, err);
        return;
    }
    int64_t at;
    json_t *ok = json_object_get(reply, "succeeded");
    if (!header_revision(reply, &at)) {
        entry_fail_malformed(en, "a txn");
        return;
    }
    if (!json_is_true(ok) && en->state == E_LEADER) {
        key_gone(en);
        return;
    }
    if (!json_is_true(ok)) {
        /* our key is gone (deleted, or with its lease): start over */
        entry_campaign(en);
        return;
    }
    if (en->state == E_LEADER) {
        /* a leader re-checking after a compaction: still ours */
        en->watch = watch_start(en->s, en->name, NULL, at + 1, true, true, leader_watch_cb, en);
        return;
    }
    kv pred, leader;
    int has_pred = txn_kv(reply, 0, 0, &pred);
    int has_leader = has_pred < 0 ? -1 : txn_kv(reply, 1, 0, &leader);
    if (has_pred < 0 || has_leader < 0) {
        if (has_pred > 0)
            kv_free(&pred);
        entry_fail_malformed(en, "a txn");
        return;
    }
    entry_decide(en, has_leader ? &leader : NULL, has_pred ? &pred : NULL, at);
    if (has_pred)
        kv_free(&pred);
    if (has_leader)
        kv_free(&leader);
}

/* Is our key still there, and who is before us? */
static void entry_check(entry *en)
{
    if (en->state != E_LEADER)
        en->state = E_CHECKING;
    json_t *cmp = json_pack("[{s:o, s:s, s:s, s:o}]", "key", jb64s(en->name), "target", "CREATE",
                            "result", "EQUAL", "create_revision", jnum(en->rev));
    json_t *success = en->state == E_LEADER
                          ? json_array()
                          : json_pack("[o, o]", range_op(en->prefix, true, 1, en->rev - 1),
                                      range_op(en->prefix, false, 1, 0));
    json_t *body = json_pack("{s:o, s:o}", "compare", cmp, "success", success);
    en->call = call_start(en->s, "/v3/kv/txn", body, entry_checked, en);
}

static void entry_created(void *ctx, json_t *reply, const char *err, double sent_at)
{
    entry *en = ctx;
    en->call = NULL;
    if (err) {
        if (strstr(err, "requested lease not found")) {
            lease_dead(en->lease, "a put under it was refused");
            return;
        }
        entry_fail(en, err);
        return;
    }
    int64_t at;
    if (!header_revision(reply, &at)) {
        entry_fail_malformed(en, "a txn");
        return;
    }
    if (!json_is_true(json_object_get(reply, "succeeded"))) {
        /* the key exists: ours from an earlier attempt (the name holds our
         * lease id) if its lease is ours; then keep its place */
        kv mine;
        int found = txn_kv(reply, 0, 0, &mine);
        if (found > 0 && mine.create_rev <= 0) {
            /* our term and the bound of the predecessor read: no revision */
            kv_free(&mine);
            found = -1;
        }
        if (found < 0) {
            entry_fail_malformed(en, "a txn");
            return;
        }
        if (found == 0) {
            entry_create(en); /* gone again meanwhile */
            return;
        }
        bool ours = mine.lease == en->lease->id;
        en->rev = mine.create_rev;
        kv_free(&mine);
        if (!ours) {
            char msg[400];
            snprintf(msg, sizeof msg, "etcd: key '%s' exists under another lease", en->name);
            entry_fail(en, msg);
            return;
        }
        entry_check(en);
        return;
    }
    en->rev = at;
    kv leader, me, pred;
    int has_leader = txn_kv(reply, 1, 0, &leader);
    int has_me = has_leader < 0 ? -1 : txn_kv(reply, 2, 0, &me);
    int has_pred = has_me < 0 ? -1 : txn_kv(reply, 2, 1, &pred);
    if (has_leader <= 0 || has_me <= 0 || has_pred < 0 || me.create_rev != at) {
        if (has_leader > 0)
            kv_free(&leader);
        if (has_me > 0)
            kv_free(&me);
        if (has_pred > 0)
            kv_free(&pred);
        en->state = E_CHECKING; /* the key may exist: entry_fail deletes it */
        entry_fail_malformed(en, "a create txn");
        return;
    }
    entry_decide(en, &leader, has_pred ? &pred : NULL, at);
    kv_free(&leader);
    kv_free(&me);
    if (has_pred)
        kv_free(&pred);
}

/* Creates our key unless it exists, and reads who leads and who is just
 * before us, in one txn. */
static void entry_create(entry *en)
{
    en->state = E_CREATING;
    lease *l = en->lease;
    json_t *cmp = json_pack("[{s:o, s:s, s:s, s:s}]", "key", jb64s(en->name), "target", "CREATE",
                            "result", "EQUAL", "create_revision", "0");
    struct ls_election_view *v = ls_election_view(en->e);
    json_t *put = json_pack("{s:{s:o, s:o, s:o}}", "request_put", "key", jb64s(en->name), "value",
                            jb64(v->value, v->value_len), "lease", jnum(l->id));
    json_t *success = json_pack("[o, o, o]", put, range_op(en->prefix, false, 1, 0),
                                range_op(en->prefix, true, 2, 0));
    json_t *failure = json_pack("[{s:{s:o}}, o]", "request_range", "key", jb64s(en->name),
                                range_op(en->prefix, false, 1, 0));
    json_t *body =
        json_pack("{s:o, s:o, s:o}", "compare", cmp, "success", success, "failure", failure);
    en->call = call_start(en->s, "/v3/kv/txn", body, entry_created, en);
}

static uint64_t name_hash(const char *name)
{
    uint64_t h = 14695981039346656037ULL; /* FNV-1a */
    for (; *name; name++)
        h = (h ^ (unsigned char)*name) * 1099511628211ULL;
    return h;
}

/* Picks our key's name under the current lease and creates it, once any
 * deletion of that name still in flight is done. */
static void entry_campaign(entry *en)
{
    etcd *s = en->s;
    lease *l = en->lease;
    if (!l->alive) {
        en->state = E_WAIT_LEASE;
        lease_grant(l);
        return;
    }
    /* Our deadline counts from the lease's last keepalive. One sent more
     * than half our renew_deadline ago (joining a lease kept alive for
     * longer deadlines) would leave too little of it, or none: the engine
     * refuses a leadership acquired past its deadline. So a fresh one
     * first, and no more than one: a slow store gets its say anyway. */
    double half = ls_election_view(en->e)->renew_deadline / 2;
    if (ls_now() - l->valid_from > half &&
        !(en->lease_asked > 0 && l->valid_from >= en->lease_asked)) {
        en->state = E_WAIT_LEASE;
        en->lease_asked = ls_now();
        if (l->call)
            l->probe = true; /* the keepalive in flight may be too old too */
        else
            lease_keepalive(l);
        return;
    }
    en->lease_asked = 0;
    /* keys have no length limit: the name is the whole prefix, never cut */
    size_t cap = strlen(en->prefix) + 40;
    char *base = malloc(cap), *name = malloc(cap);
    snprintf(base, cap, "%s%" PRIx64, en->prefix, (uint64_t)l->id);
    free(en->name);
    en->name = NULL;
    release *r = NULL;
    /* two elections of one store on one key share the lease: ".n" tells
     * their keys apart */
    for (unsigned n = 0;; n++) {
        if (n == 0)
            snprintf(name, cap, "%s", base);
        else
            snprintf(name, cap, "%s.%u", base, n);
        bool taken = false;
        uint64_t hash = name_hash(name);
        for (entry *o = s->entries; o && !taken; o = o->next)
            taken = o != en && o->name && o->name_hash == hash && !strcmp(o->name, name);
        r = release_find(s, name);
        if (!taken && !(r && r->waiter))
            break;
    }
    en->name = name;
    en->name_hash = name_hash(name);
    free(base);
    if (r) {
        en->state = E_WAIT_RELEASE;
        r->waiter = en;
        return;
    }
    entry_create(en);
}

/* ---- followers ---- */

static void entry_read(entry *en);

static void follower_watch_cb(void *ctx, watch_kind kind, json_t *events, const char *err)
{
    entry *en = ctx;
    if (watch_settled(en, kind, err))
        return;
    if (kind == WATCH_COMPACTED) {
        /* events were lost: read everything again (etcd issue 18163) */
        ls_log(LS_INFO, "etcd: history of '%s' compacted past our watch; reading it again",
               en->prefix);
        entry_unwatch(en);
        entry_read(en);
        return;
    }
    for (size_t i = 0; i < json_array_size(events); i++) {
        json_t *ev = json_array_get(events, i);
        const char *type = json_string_value(json_object_get(ev, "type"));
        kv k;
        if (!kv_parse(json_object_get(ev, "kv"), &k)) {
            ls_election_error(en->e, "etcd: malformed watch event; reading again");
            if (en->dead) /* a report may stop the follower */
                return;
            entry_unwatch(en);
            entry_read(en);
            return;
        }
        bool is_leader = en->leader_key && strlen(en->leader_key) == k.key_len &&
                         !memcmp(en->leader_key, k.key, k.key_len);
        bool deleted = type && !strcmp(type, "DELETE");
        if (deleted && is_leader) {
            /* who is next is not in the event: read it (at once, the watch
             * goes on from the read's revision) */
            kv_free(&k);
            entry_unwatch(en);
            entry_read(en);
            return;
        }
        if (!deleted && (is_leader || !en->leader_key)) {
            /* a new value of the leader, or the first key after vacancy */
            free(en->leader_key);
            en->leader_key = strndup(k.key, k.key_len);
            report_leader(en, &k);
            if (en->dead) {
                kv_free(&k);
                return;
            }
        }
        kv_free(&k);
    }
}

static void entry_read_done(void *ctx, json_t *reply, const char *err, double sent_at)
{
    entry *en = ctx;
    en->call = NULL;
    if (err) {
        entry_fail(en, err);
        return;
    }
    int64_t at;
    json_t *kvs = json_object_get(reply, "kvs");
    kv leader;
    if (!header_revision(reply, &at) || (kvs && !json_is_array(kvs)) ||
        (json_array_size(kvs) > 0 && !kv_parse(json_array_get(kvs, 0), &leader))) {
        entry_fail_malformed(en, "a range");
        return;
    }
    bool found = json_array_size(kvs) > 0;
    free(en->leader_key);
    en->leader_key = found ? strndup(leader.key, leader.key_len) : NULL;
    en->state = E_FOLLOWING;
    char *end = prefix_end(en->prefix);
    en->watch = watch_start(en->s, en->prefix, end, at + 1, false, false, follower_watch_cb, en);
    free(end);
    report_leader(en, found ? &leader : NULL);
    if (found)
        kv_free(&leader);
}

static void entry_read(entry *en)
{
    en->state = E_READING;
    en->call =
        call_start(en->s, "/v3/kv/range", range_body(en->prefix, false, 1, 0), entry_read_done, en);
}

/* ---- the vtable ---- */

static entry *entry_new(etcd *s, ls_election *e)
{
    entry *en = calloc(1, sizeof *en);
    struct ls_election_view *v = ls_election_view(e);
    en->s = s;
    en->e = e;
    en->candidate = v->candidate;
    size_t n = strlen(v->key);
    en->prefix = malloc(n + 2);
    memcpy(en->prefix, v->key, n);
    en->prefix[n] = '/';
    en->prefix[n + 1] = '\0';
    en->next = s->entries;
    if (en->next)
        en->next->prev = en;
    s->entries = en;
    v->backend_data = en;
    return en;
}

static void etcd_campaign(ls_store *store, ls_election *e)
{
    etcd *s = store->impl;
    enter(s);
    entry *en = entry_new(s, e);
    lease_attach(s, en, ls_election_view(e)->ttl);
    entry_campaign(en);
    leave(s);
}

static void etcd_follow(ls_store *store, ls_election *e)
{
    etcd *s = store->impl;
    enter(s);
    entry_read(entry_new(s, e));
    leave(s);
}

static void etcd_cancel(ls_store *store, ls_election *e)
{
    etcd *s = store->impl;
    entry *en = ls_election_view(e)->backend_data;
    if (!en)
        return;
    enter(s);
    entry_end(en);
    leave(s);
}

static void etcd_free(etcd *s)
{
    while (s->calls)
        call_free(s->calls);
    while (s->releases) {
        release *r = s->releases;
        s->releases = r->next;
        event_free(r->timer);
        free(r->name);
        free(r);
        bg_end(s);
    }
    while (s->leases)
        lease_free(s->leases);
    for (size_t b = 0; b < WATCH_BUCKETS; b++)
        while (s->buckets[b])
            watch_stop(s->buckets[b]);
    ls_http_cancel(s->stream);
    ls_http_cancel(s->auth_req);
    ls_http_free(s->http);
    ls_http_free(s->lease_http);
    ls_http_free(s->watch_http);
    if (s->stream_timer)
        event_free(s->stream_timer);
    if (s->heartbeat)
        event_free(s->heartbeat);
    for (size_t i = 0; i < s->nendpoints; i++)
        free(s->endpoints[i]);
    free(s->endpoints);
    free(s->user);
    if (s->password)
        memset(s->password, 0, strlen(s->password));
    free(s->password);
    free(s->token);
    free(s->in);
    free(s);
}

/* The outermost callback of ours is returning: free what died meanwhile,
 * and finish a close. */
static void leave(etcd *s)
{
    if (--s->depth > 0)
        return;
    while (s->graveyard) {
        entry *en = s->graveyard;
        s->graveyard = en->grave_next;
        entry_free(en);
    }
    if (s->closing && !s->closed) {
        s->closed = true;
        s->depth++;
        /* no election is left: leases still waiting for their idle check
         * are revoked now; revokes and deletions in flight finish */
        while (s->leases)
            lease_retire(s->leases);
        ls_http_cancel(s->stream);
        s->stream = NULL;
        evtimer_del(s->stream_timer);
        evtimer_del(s->heartbeat);
        s->depth--;
    }
    if (s->closed && s->background == 0)
        etcd_free(s);
}

static void etcd_close(ls_store *store)
{
    etcd *s = store->impl;
    store->impl = NULL;
    enter(s);
    s->closing = true;
    leave(s);
}

static const char *const known_options[] = {"tls.ca",        "tls.cert", "tls.key", "auth.username",
                                            "auth.password", "timeout",  NULL};

static int etcd_open(ls_store *store, const ls_store_config *cfg, char *err, size_t errlen)
{
    if (ls_config_check(cfg, known_options, err, errlen) < 0)
        return -1;
    const char *ca = ls_config_get(cfg, "tls.ca"), *cert = ls_config_get(cfg, "tls.cert"),
               *key = ls_config_get(cfg, "tls.key");
    const char *user = ls_config_get(cfg, "auth.username"),
               *password = ls_config_get(cfg, "auth.password");
    if ((cert != NULL) != (key != NULL)) {
        snprintf(err, errlen, "etcd store '%s': tls.cert and tls.key go together", cfg->redacted);
        return -1;
    }
    char *from_url_user = NULL, *from_url_password = NULL;
    if (cfg->userinfo) {
        const char *colon = strchr(cfg->userinfo, ':');
        from_url_user =
            colon ? strndup(cfg->userinfo, (size_t)(colon - cfg->userinfo)) : strdup(cfg->userinfo);
        from_url_password = strdup(colon ? colon + 1 : "");
    }
    if (!user)
        user = from_url_user;
    if (!password)
        password = from_url_password;
    if (password && !user) {
        snprintf(err, errlen, "etcd store '%s': auth.password needs auth.username", cfg->redacted);
        free(from_url_user);
        free(from_url_password);
        return -1;
    }
    /* they go to etcd in a JSON string: json_pack would refuse them later */
    json_t *user_json = json_string(user ? user : ""),
           *password_json = json_string(password ? password : "");
    bool utf8 = user_json && password_json;
    json_decref(user_json);
    json_decref(password_json);
    if (!utf8) {
        snprintf(err, errlen, "etcd store '%s': auth.username and auth.password must be UTF-8",
                 cfg->redacted);
        free(from_url_user);
        free(from_url_password);
        return -1;
    }
    ls_http_options opts = {.ca = ca,
                            .cert = cert,
                            .key = key,
                            .max_host_connections = UNARY_CONNECTIONS,
                            .max_in_flight = UNARY_CONNECTIONS,
                            .connect_timeout = cfg->timeout};
    ls_http *http = ls_http_new(&opts, err, errlen);
    opts.max_host_connections = 1;
    opts.max_in_flight = 0; /* the stream never ends: no queue for it */
    ls_http *watch_http = http ? ls_http_new(&opts, err, errlen) : NULL;
    opts.max_in_flight = 1;
    ls_http *lease_http = watch_http ? ls_http_new(&opts, err, errlen) : NULL;
    if (!lease_http) {
        ls_http_free(http);
        ls_http_free(watch_http);
        free(from_url_user);
        free(from_url_password);
        return -1;
    }
    etcd *s = calloc(1, sizeof *s);
    s->store = store;
    s->http = http;
    s->watch_http = watch_http;
    s->lease_http = lease_http;
    s->timeout = cfg->timeout;
    s->user = user ? strdup(user) : NULL;
    s->password = user ? strdup(password ? password : "") : NULL;
    free(from_url_user);
    free(from_url_password);
    bool tls = ca || cert;
    s->endpoints = calloc(cfg->nhosts, sizeof *s->endpoints);
    for (size_t i = 0; i < cfg->nhosts; i++) {
        size_t n = strlen(cfg->hosts[i]) + 16;
        s->endpoints[i] = malloc(n);
        snprintf(s->endpoints[i], n, "%s://%s", tls ? "https" : "http", cfg->hosts[i]);
    }
    s->nendpoints = cfg->nhosts;
    s->stream_timer = evtimer_new(ls_loop_base(), stream_timer_cb, s);
    s->heartbeat = evtimer_new(ls_loop_base(), heartbeat_cb, s);
    store->impl = s;
    return 0;
}

const ls_backend ls_backend_etcd = {
    .scheme = "etcd",
    .min_ttl = 2, /* etcd raises shorter lease ttls to about this anyway */
    .max_ttl = 9e9,
    .open = etcd_open,
    .campaign = etcd_campaign,
    .follow = etcd_follow,
    .cancel = etcd_cancel,
    .close = etcd_close,
    .inject = NULL,
};
