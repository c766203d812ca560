/* consul-double: a stand-in for one Consul agent's HTTP API, for the specs.
 *
 *   consul-double --port P [--bind 127.0.0.1] [--acl-token T] [--node NAME] [--verbose]
 *
 * No Consul server can be installed where the tests run, so the Consul
 * backend is tested against this program. It follows Consul's documented
 * HTTP API (api-docs/session.mdx, api-docs/kv.mdx,
 * api-docs/features/blocking.mdx) and the rules of Consul's state store
 * (agent/consul/state/kvs.go, session.go) for the part the backend uses:
 * sessions with TTL, Behavior, LockDelay and node checks; KV get/put/delete
 * with acquire, release, cas, flags and recurse; LockIndex, ModifyIndex,
 * CreateIndex, Session; blocking queries on KV reads; the lock-delay;
 * ACL tokens. What it does not model is listed in README.md ("The Consul double").
 *
 * One deliberate difference: a session's TTL timer invalidates it after
 * exactly TTL. Consul multiplies the TTL by 2 before invalidating (it "may
 * keep a session up to 2x TTL"), so this double is the stricter case for a
 * client: anything that survives here survives a real agent.
 *
 * Single-threaded on one libevent loop: a request handler runs to the end
 * before any other, which gives every write the atomicity of a Raft apply.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

/* Limits Consul documents or enforces (structs.SessionTTLMax,
 * SessionTTLMin's default, structs.MaxLockDelay, the KV value limit and the
 * blocking query wait bounds). */
#define SESSION_TTL_MIN 10.0
#define SESSION_TTL_MAX 86400.0
#define MAX_LOCK_DELAY 60.0
#define DEFAULT_LOCK_DELAY 15.0
#define MAX_VALUE_SIZE (512 * 1024)
#define DEFAULT_WAIT 300.0
#define MAX_WAIT 600.0
/* The only check registered on the double's node; it always passes. */
#define SERF_CHECK "serfHealth"

typedef struct kv_entry {
    struct kv_entry *next;
    char *key;
    char *value;
    size_t len;
    uint64_t flags, create_index, modify_index, lock_index;
    char session[37]; /* "" when unlocked */
} kv_entry;

/* What a key leaves behind, one list of each kind: a tombstone holds a
 * deleted key's last index, so a recursive read's index never slides back
 * when the newest key under a prefix goes (Consul's graveyard); a lock
 * delay holds a key whose lock was freed by an invalidated session:
 * acquiring it is refused until `until` (monotonic seconds). */
typedef struct key_mark {
    struct key_mark *next;
    char *key;
    uint64_t index; /* tombstones */
    double until;   /* lock delays */
} key_mark;

typedef struct session {
    struct session *next;
    char id[37];
    char *name, *node, *ttl_text;
    double ttl; /* seconds; 0: no TTL */
    int64_t lock_delay_ns;
    bool behavior_delete;
    json_t *node_checks;
    uint64_t create_index, modify_index;
    struct event *timer;
} session;

/* A parked blocking query on /v1/kv. */
typedef struct waiter {
    struct waiter *next, *prev;
    struct evhttp_request *req;
    char *key;
    bool recurse, raw;
    struct event *timer;
} waiter;

/* A request's decoded query string. Consul accepts bare flags such as
 * "?recurse", which evhttp_parse_query_str rejects, so this keeps its own. */
typedef struct query {
    char *names[32], *values[32];
    int n;
} query;

static struct {
    struct event_base *base;
    const char *acl_token; /* NULL: ACLs off */
    const char *node;
    bool verbose;
    uint64_t index;         /* the Raft index: every applied write */
    uint64_t kv_index;      /* the KV table's index (incl. tombstones) */
    uint64_t session_index; /* the sessions table's index */
    kv_entry *kvs;
    key_mark *tombstones;
    session *sessions;
    key_mark *delays;
    waiter *waiters;
} S;

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "consul-double: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void *xmalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        logf_("out of memory");
        abort();
    }
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xmalloc(n), s, n);
}

static char *xmemdup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    return p;
}

/* ---- parsing helpers ---- */

/* Go's time.ParseDuration, which Consul uses for TTL, LockDelay and wait:
 * "10s", "1.5m", "1m30s", "250ms"; a bare "0" is the only unitless value. */
static int parse_duration(const char *s, double *out)
{
    static const struct {
        const char *unit;
        double scale;
    } units[] = {{"ns", 1e-9}, {"us", 1e-6}, {"\xc2\xb5s", 1e-6}, {"ms", 1e-3},
                 {"s", 1},     {"m", 60},    {"h", 3600}};
    double total = 0, sign = 1;
    if (*s == '-' || *s == '+')
        sign = *s++ == '-' ? -1 : 1;
    if (!strcmp(s, "0")) {
        *out = 0;
        return 0;
    }
    if (!*s)
        return -1;
    while (*s) {
        char *end;
        if (!isdigit((unsigned char)*s) && *s != '.')
            return -1;
        double v = strtod(s, &end);
        if (end == s)
            return -1;
        s = end;
        size_t best = 0;
        double scale = 0;
        for (size_t i = 0; i < sizeof units / sizeof *units; i++) {
            size_t n = strlen(units[i].unit);
            if (!strncmp(s, units[i].unit, n) && n > best) {
                best = n;
                scale = units[i].scale;
            }
        }
        if (!best)
            return -1;
        s += best;
        total += v * scale;
    }
    *out = sign * total;
    return 0;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decodes n bytes of s ('+' means space in a query, not a path). */
static char *url_decode(const char *s, size_t n, bool plus_is_space)
{
    char *out = xmalloc(n + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            *o++ = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else if (s[i] == '+' && plus_is_space) {
            *o++ = ' ';
        } else {
            *o++ = s[i];
        }
    }
    *o = 0;
    return out;
}

static void query_parse(query *q, const char *qs)
{
    q->n = 0;
    while (qs && *qs && q->n < 32) {
        const char *amp = strchr(qs, '&');
        size_t len = amp ? (size_t)(amp - qs) : strlen(qs);
        const char *eq = memchr(qs, '=', len);
        if (len) {
            size_t nlen = eq ? (size_t)(eq - qs) : len;
            q->names[q->n] = url_decode(qs, nlen, true);
            q->values[q->n] = eq ? url_decode(eq + 1, len - nlen - 1, true) : xstrdup("");
            q->n++;
        }
        qs = amp ? amp + 1 : NULL;
    }
}

static void query_free(query *q)
{
    for (int i = 0; i < q->n; i++) {
        free(q->names[i]);
        free(q->values[i]);
    }
    q->n = 0;
}

/* The value of parameter `name`, "" for a bare flag, NULL if absent. */
static const char *query_get(const query *q, const char *name)
{
    for (int i = 0; i < q->n; i++)
        if (!strcmp(q->names[i], name))
            return q->values[i];
    return NULL;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (!s || !*s || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static void new_uuid(char out[37])
{
    unsigned char b[16];
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd < 0 || read(fd, b, sizeof b) != (ssize_t)sizeof b) {
        logf_("cannot read /dev/urandom");
        abort();
    }
    close(fd);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

static bool is_uuid(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (hexval(s[i]) < 0) {
            return false;
        }
    }
    return true;
}

/* Consul's KV values travel base64-encoded inside JSON. */
static json_t *base64_json(const char *data, size_t len)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (!len)
        return json_null(); /* Go marshals an empty []byte value as null */
    char *out = xmalloc((len + 2) / 3 * 4 + 1), *o = out;
    const unsigned char *p = (const unsigned char *)data;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = p[i] << 16 | (i + 1 < len ? p[i + 1] << 8 : 0) | (i + 2 < len ? p[i + 2] : 0);
        *o++ = tbl[v >> 18 & 63];
        *o++ = tbl[v >> 12 & 63];
        *o++ = i + 1 < len ? tbl[v >> 6 & 63] : '=';
        *o++ = i + 2 < len ? tbl[v & 63] : '=';
    }
    *o = 0;
    json_t *j = json_string(out);
    free(out);
    return j;
}

/* ---- replies ---- */

static void set_header(struct evhttp_request *req, const char *name, const char *value)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_remove_header(h, name);
    evhttp_add_header(h, name, value);
}

static void set_index_header(struct evhttp_request *req, uint64_t index)
{
    char buf[32];
    /* Consul never hands out index 0: a blocking client would spin on it. */
    snprintf(buf, sizeof buf, "%" PRIu64, index ? index : 1);
    set_header(req, "X-Consul-Index", buf);
    set_header(req, "X-Consul-KnownLeader", "true");
    set_header(req, "X-Consul-LastContact", "0");
}

static const char *status_reason(int code)
{
    switch (code) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Request Entity Too Large";
    default:
        return "Internal Server Error";
    }
}

static void log_reply(struct evhttp_request *req, int code)
{
    if (!S.verbose)
        return;
    /* the path only: a ?token= must not reach the log */
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    static const char *const methods[] = {"GET", "POST", "HEAD", "PUT", "DELETE"};
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    const char *m = "?";
    for (int i = 0; i < 5; i++)
        if (cmd == (enum evhttp_cmd_type)(1 << i))
            m = methods[i];
    logf_("%s %s -> %d", m, path ? path : "", code);
}

static void reply_body(struct evhttp_request *req, int code, const char *type, const char *body,
                       size_t len)
{
    struct evbuffer *buf = evbuffer_new();
    evbuffer_add(buf, body, len);
    set_header(req, "Content-Type", type);
    log_reply(req, code);
    evhttp_send_reply(req, code, status_reason(code), buf);
    evbuffer_free(buf);
}

static void reply_json(struct evhttp_request *req, int code, json_t *j)
{
    char *text = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    reply_body(req, code, "application/json", text, strlen(text));
    free(text);
    json_decref(j);
}

/* Consul answers errors with their text as a plain body. */
static void reply_error(struct evhttp_request *req, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void reply_error(struct evhttp_request *req, int code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    reply_body(req, code, "text/plain; charset=utf-8", msg, strlen(msg));
}

/* ---- ACL ---- */

static const char *request_token(struct evhttp_request *req, const query *q)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    const char *t = evhttp_find_header(h, "X-Consul-Token");
    if (t && *t)
        return t;
    t = evhttp_find_header(h, "Authorization");
    if (t && !strncasecmp(t, "Bearer ", 7))
        return t + 7;
    t = query_get(q, "token");
    return t && *t ? t : NULL;
}

/* With --acl-token, that token is the only one the double knows (a
 * management token) and the anonymous token may do nothing: Consul with
 * default_policy "deny". Answers 403 like Consul and returns false. */
static bool acl_allows(struct evhttp_request *req, const query *q, const char *perm,
                       const char *resource)
{
    if (!S.acl_token)
        return true;
    const char *t = request_token(req, q);
    if (!t) {
        reply_error(req, 403, "Permission denied: anonymous token lacks permission '%s' on \"%s\"",
                    perm, resource);
        return false;
    }
    if (strcmp(t, S.acl_token)) {
        reply_error(req, 403, "ACL not found");
        return false;
    }
    return true;
}

/* ---- the KV table ---- */

static kv_entry *kv_find(const char *key)
{
    for (kv_entry *e = S.kvs; e; e = e->next)
        if (!strcmp(e->key, key))
            return e;
    return NULL;
}

static bool has_prefix(const char *s, const char *prefix)
{
    return !strncmp(s, prefix, strlen(prefix));
}

static void waiter_reply(waiter *w);

/* Wakes every blocking query that watches `key`. */
static void kv_notify(const char *key)
{
    waiter *w = S.waiters;
    while (w) {
        waiter *next = w->next;
        if (w->recurse ? has_prefix(key, w->key) : !strcmp(key, w->key))
            waiter_reply(w);
        w = next;
    }
}

static key_mark *key_mark_find(key_mark *list, const char *key)
{
    for (key_mark *m = list; m; m = m->next)
        if (!strcmp(m->key, key))
            return m;
    return NULL;
}

/* The mark of `key` in *list, added if it has none. */
static key_mark *key_mark_get(key_mark **list, const char *key)
{
    key_mark *m = key_mark_find(*list, key);
    if (m)
        return m;
    m = xmalloc(sizeof *m);
    m->key = xstrdup(key);
    m->index = 0;
    m->until = 0;
    m->next = *list;
    *list = m;
    return m;
}

static void tombstone_set(const char *key, uint64_t index)
{
    key_mark_get(&S.tombstones, key)->index = index;
}

static void kv_delete_entry(kv_entry *e, uint64_t index)
{
    for (kv_entry **p = &S.kvs; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            break;
        }
    tombstone_set(e->key, index);
    S.kv_index = index;
    char *key = e->key;
    free(e->value);
    free(e);
    kv_notify(key);
    free(key);
}

/* Writes `e` after a change; Consul skips writes that change nothing. */
static void kv_touch(kv_entry *e, uint64_t index)
{
    e->modify_index = index;
    S.kv_index = index;
    kv_notify(e->key);
}

static void lock_delay_set(const char *key, double seconds)
{
    double until = mono_now() + seconds;
    key_mark_get(&S.delays, key)->until = until;
}

static double lock_delay_left(const char *key)
{
    key_mark *d = key_mark_find(S.delays, key);
    return d ? d->until - mono_now() : 0;
}

/* ---- sessions ---- */

static session *session_find(const char *id)
{
    for (session *s = S.sessions; s; s = s->next)
        if (!strcmp(s->id, id))
            return s;
    return NULL;
}

static json_t *session_json(const session *s)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:O, s:n, s:I, s:I}", "ID", s->id, "Name",
                     s->name, "Node", s->node, "LockDelay", (json_int_t)s->lock_delay_ns,
                     "Behavior", s->behavior_delete ? "delete" : "release", "TTL", s->ttl_text,
                     "NodeChecks", s->node_checks, "ServiceChecks", "CreateIndex",
                     (json_int_t)s->create_index, "ModifyIndex", (json_int_t)s->modify_index);
}

/* Consul's deleteSessionTxn: every way a session ends (destroy, TTL, a
 * failing check) releases or deletes the keys it holds and starts their
 * lock-delay. */
static void session_invalidate(session *s, const char *why)
{
    uint64_t index = ++S.index;
    double delay = s->lock_delay_ns / 1e9;
    if (delay > MAX_LOCK_DELAY)
        delay = MAX_LOCK_DELAY;

    for (session **p = &S.sessions; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            break;
        }
    S.session_index = index;
    logf_("session %s invalidated (%s), behavior %s, lock-delay %gs", s->id, why,
          s->behavior_delete ? "delete" : "release", delay);

    kv_entry *e = S.kvs;
    while (e) {
        kv_entry *next = e->next;
        if (!strcmp(e->session, s->id)) {
            if (delay > 0)
                lock_delay_set(e->key, delay);
            if (s->behavior_delete) {
                kv_delete_entry(e, index);
            } else {
                e->session[0] = 0;
                kv_touch(e, index);
            }
        }
        e = next;
    }
    if (s->timer)
        event_free(s->timer);
    json_decref(s->node_checks);
    free(s->name);
    free(s->node);
    free(s->ttl_text);
    free(s);
}

static void session_expired(evutil_socket_t fd, short what, void *arg)
{
    session_invalidate(arg, "TTL expired");
}

static void session_arm(session *s)
{
    if (s->ttl <= 0)
        return;
    struct timeval tv = {(time_t)s->ttl, (suseconds_t)((s->ttl - (time_t)s->ttl) * 1e6)};
    if (!s->timer)
        s->timer = evtimer_new(S.base, session_expired, s);
    evtimer_add(s->timer, &tv);
}

/* A duration field of the create body: a Go duration string, or a number
 * of nanoseconds where small numbers mean seconds (Consul's
 * lockDelayMinThreshold of 1000). */
static int json_duration_ns(json_t *v, int64_t *out)
{
    double secs;
    if (json_is_string(v)) {
        if (parse_duration(json_string_value(v), &secs))
            return -1;
        *out = (int64_t)(secs * 1e9 + (secs >= 0 ? 0.5 : -0.5));
        return 0;
    }
    if (json_is_number(v)) {
        double n = json_number_value(v);
        *out = n < 1000 ? (int64_t)(n * 1e9) : (int64_t)n;
        return 0;
    }
    return -1;
}

static bool checks_known(json_t *list, const char **missing)
{
    size_t i;
    json_t *c;
    json_array_foreach(list, i, c)
    {
        if (!json_is_string(c) || strcmp(json_string_value(c), SERF_CHECK)) {
            *missing = json_is_string(c) ? json_string_value(c) : "?";
            return false;
        }
    }
    return true;
}

static void session_create(struct evhttp_request *req, const query *q)
{
    if (!acl_allows(req, q, "session:write", S.node))
        return;
    int64_t lock_delay_ns = (int64_t)(DEFAULT_LOCK_DELAY * 1e9);
    const char *name = "", *node = S.node, *behavior = "", *ttl = "";
    json_t *checks = NULL, *node_checks = NULL, *body = NULL;

    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len > 0) {
        json_error_t jerr;
        char *text = xmemdup((const char *)evbuffer_pullup(in, -1), len);
        body = json_loads(text, 0, &jerr);
        free(text);
        if (!json_is_object(body)) {
            reply_error(req, 400, "Request decode failed: %s",
                        body ? "body is not a JSON object" : jerr.text);
            json_decref(body);
            return;
        }
        const char *k;
        json_t *v;
        /* Go's decoder matches field names case-insensitively. Unknown
         * fields are refused here (Consul ignores them) so that a typo in
         * a client shows up in the tests instead of silently defaulting. */
        json_object_foreach(body, k, v)
        {
            bool bad = false;
            if (!strcasecmp(k, "LockDelay"))
                bad = json_duration_ns(v, &lock_delay_ns) != 0;
            else if (!strcasecmp(k, "Name"))
                bad = !json_is_string(v) || !(name = json_string_value(v));
            else if (!strcasecmp(k, "Node"))
                bad = !json_is_string(v) || !(node = json_string_value(v));
            else if (!strcasecmp(k, "Behavior"))
                bad = !json_is_string(v) || !(behavior = json_string_value(v));
            else if (!strcasecmp(k, "TTL"))
                bad = !json_is_string(v) || !(ttl = json_string_value(v));
            else if (!strcasecmp(k, "Checks"))
                bad = !(json_is_array(v) || json_is_null(v)) || !(checks = v);
            else if (!strcasecmp(k, "NodeChecks"))
                bad = !(json_is_array(v) || json_is_null(v)) || !(node_checks = v);
            else if (!strcasecmp(k, "ServiceChecks")) {
                if (json_array_size(v) > 0) {
                    reply_error(req, 500,
                                "Missing check registration (the double has no "
                                "services)");
                    json_decref(body);
                    return;
                }
            } else {
                reply_error(req, 400, "Request decode failed: json: unknown field \"%s\"", k);
                json_decref(body);
                return;
            }
            if (bad) {
                reply_error(req, 400, "Request decode failed: field \"%s\" has the wrong type", k);
                json_decref(body);
                return;
            }
        }
    }

    /* Consul's fixupEmptySessionChecks: "Checks": [] means no checks. */
    json_t *effective;
    if (node_checks && json_is_array(node_checks))
        effective = json_copy(node_checks);
    else if (checks && json_is_array(checks))
        effective = json_copy(checks);
    else
        effective = json_pack("[s]", SERF_CHECK);

    const char *missing = NULL;
    double ttl_secs = 0;
    int code = 0;
    char msg[256];
    if (strcmp(node, S.node)) {
        code = 500;
        snprintf(msg, sizeof msg, "Missing node registration");
    } else if (!checks_known(effective, &missing)) {
        code = 500;
        snprintf(msg, sizeof msg, "Missing check '%s' registration", missing);
    } else if (*behavior && strcmp(behavior, "release") && strcmp(behavior, "delete")) {
        code = 500;
        snprintf(msg, sizeof msg, "Invalid Behavior setting '%s'", behavior);
    } else if (*ttl && parse_duration(ttl, &ttl_secs)) {
        code = 500;
        snprintf(msg, sizeof msg, "Session TTL '%s' invalid: time: invalid duration \"%s\"", ttl,
                 ttl);
    } else if (ttl_secs != 0 && (ttl_secs < SESSION_TTL_MIN || ttl_secs > SESSION_TTL_MAX)) {
        /* Consul formats the Duration with %d: nanoseconds. */
        code = 500;
        snprintf(msg, sizeof msg, "Invalid Session TTL '%lld', must be between [10s=24h0m0s]",
                 (long long)(ttl_secs * 1e9));
    }
    if (code) {
        reply_error(req, code, "%s", msg);
        json_decref(effective);
        json_decref(body);
        return;
    }

    session *s = xmalloc(sizeof *s);
    do
        new_uuid(s->id);
    while (session_find(s->id));
    s->name = xstrdup(name);
    s->node = xstrdup(node);
    s->ttl_text = xstrdup(ttl);
    s->ttl = ttl_secs;
    s->lock_delay_ns = lock_delay_ns;
    s->behavior_delete = !strcmp(behavior, "delete");
    s->node_checks = effective;
    s->create_index = s->modify_index = S.session_index = ++S.index;
    s->next = S.sessions;
    S.sessions = s;
    session_arm(s);
    if (S.verbose)
        logf_("session %s created, TTL %s, lock-delay %gs, behavior %s", s->id, *ttl ? ttl : "none",
              lock_delay_ns / 1e9, s->behavior_delete ? "delete" : "release");
    json_decref(body);
    reply_json(req, 200, json_pack("{s:s}", "ID", s->id));
}

/* "/v1/session/<verb>/<uuid>": the uuid, or NULL after answering 400. */
static const char *session_id_of(struct evhttp_request *req, const char *rest)
{
    if (!*rest) {
        reply_error(req, 400, "Missing session");
        return NULL;
    }
    return rest;
}

static void session_destroy(struct evhttp_request *req, const query *q, const char *rest)
{
    const char *id = session_id_of(req, rest);
    if (!id || !acl_allows(req, q, "session:write", S.node))
        return;
    if (!is_uuid(id)) {
        reply_error(req, 500, "Invalid session ID '%s'", id);
        return;
    }
    session *s = session_find(id);
    if (s)
        session_invalidate(s, "destroyed");
    /* idempotent: an unknown or expired session is still a 200 */
    reply_json(req, 200, json_true());
}

static void session_renew(struct evhttp_request *req, const query *q, const char *rest)
{
    const char *id = session_id_of(req, rest);
    if (!id || !acl_allows(req, q, "session:write", S.node))
        return;
    session *s = session_find(id);
    if (!s) {
        reply_error(req, 404, "Session id '%s' not found", id);
        return;
    }
    session_arm(s);
    reply_json(req, 200, json_pack("[o]", session_json(s)));
}

static void session_info(struct evhttp_request *req, const query *q, const char *rest)
{
    const char *id = session_id_of(req, rest);
    if (!id || !acl_allows(req, q, "session:read", S.node))
        return;
    json_t *list = json_array();
    session *s = session_find(id);
    if (s)
        json_array_append_new(list, session_json(s));
    set_index_header(req, S.session_index);
    reply_json(req, 200, list);
}

static void session_list(struct evhttp_request *req, const query *q)
{
    if (!acl_allows(req, q, "session:read", S.node))
        return;
    json_t *list = json_array();
    for (session *s = S.sessions; s; s = s->next)
        json_array_append_new(list, session_json(s));
    set_index_header(req, S.session_index);
    reply_json(req, 200, list);
}

/* ---- KV reads and blocking queries ---- */

static json_t *kv_json(const kv_entry *e)
{
    json_t *j = json_pack("{s:I, s:s, s:I, s:o, s:I, s:I}", "LockIndex", (json_int_t)e->lock_index,
                          "Key", e->key, "Flags", (json_int_t)e->flags, "Value",
                          base64_json(e->value, e->len), "CreateIndex", (json_int_t)e->create_index,
                          "ModifyIndex", (json_int_t)e->modify_index);
    if (e->session[0])
        json_object_set_new(j, "Session", json_string(e->session));
    return j;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp((*(kv_entry *const *)a)->key, (*(kv_entry *const *)b)->key);
}

/* The index a KV read reports (Consul's kvsGetTxn / kvsListTxn): the whole
 * KV table's for a single key; for a prefix, the newest entry or tombstone
 * under it, else the table's. */
static uint64_t kv_read_index(const char *key, bool recurse)
{
    if (!recurse || !*key)
        return S.kv_index;
    uint64_t max = 0;
    for (kv_entry *e = S.kvs; e; e = e->next)
        if (has_prefix(e->key, key) && e->modify_index > max)
            max = e->modify_index;
    for (key_mark *t = S.tombstones; t; t = t->next)
        if (has_prefix(t->key, key) && t->index > max)
            max = t->index;
    return max ? max : S.kv_index;
}

static void kv_answer(struct evhttp_request *req, const char *key, bool recurse, bool raw)
{
    set_index_header(req, kv_read_index(key, recurse));
    if (!recurse) {
        kv_entry *e = kv_find(key);
        if (!e) {
            log_reply(req, 404);
            evhttp_send_reply(req, 404, "Not Found", NULL);
        } else if (raw) {
            reply_body(req, 200, "text/plain", e->value ? e->value : "", e->len);
        } else {
            reply_json(req, 200, json_pack("[o]", kv_json(e)));
        }
        return;
    }
    size_t n = 0;
    for (kv_entry *e = S.kvs; e; e = e->next)
        n += has_prefix(e->key, key);
    if (!n) {
        log_reply(req, 404);
        evhttp_send_reply(req, 404, "Not Found", NULL);
        return;
    }
    kv_entry **list = xmalloc(n * sizeof *list);
    size_t i = 0;
    for (kv_entry *e = S.kvs; e; e = e->next)
        if (has_prefix(e->key, key))
            list[i++] = e;
    qsort(list, n, sizeof *list, cmp_key);
    json_t *arr = json_array();
    for (i = 0; i < n; i++)
        json_array_append_new(arr, kv_json(list[i]));
    free(list);
    reply_json(req, 200, arr);
}

static void waiter_free(waiter *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        S.waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    event_free(w->timer);
    free(w->key);
    free(w);
}

static void waiter_reply(waiter *w)
{
    evhttp_connection_set_closecb(evhttp_request_get_connection(w->req), NULL, NULL);
    kv_answer(w->req, w->key, w->recurse, w->raw);
    waiter_free(w);
}

static void waiter_timeout(evutil_socket_t fd, short what, void *arg) { waiter_reply(arg); }

/* The client went away while its query was parked: evhttp frees the
 * request with the connection, so forget it without answering. */
static void waiter_gone(struct evhttp_connection *conn, void *arg)
{
    if (S.verbose)
        logf_("blocking query on %s: client went away", ((waiter *)arg)->key);
    waiter_free(arg);
}

static void kv_get(struct evhttp_request *req, const query *q, const char *key)
{
    bool recurse = query_get(q, "recurse") != NULL;
    bool raw = query_get(q, "raw") != NULL;
    if (!acl_allows(req, q, "key:read", key))
        return;
    const char *index_s = query_get(q, "index"), *wait_s = query_get(q, "wait");
    uint64_t index = 0;
    double wait = DEFAULT_WAIT;
    if (index_s && parse_u64(index_s, &index)) {
        reply_error(req, 400, "Invalid index: %s", index_s);
        return;
    }
    if (wait_s && (parse_duration(wait_s, &wait) || wait < 0)) {
        reply_error(req, 400, "Invalid wait time");
        return;
    }
    if (wait > MAX_WAIT)
        wait = MAX_WAIT;

    /* Blocking query: park until something under the watched key changes
     * or the wait (plus Consul's random extra of up to wait/16) is over. */
    if (index > 0 && kv_read_index(key, recurse) <= index) {
        waiter *w = xmalloc(sizeof *w);
        w->req = req;
        w->key = xstrdup(key);
        w->recurse = recurse;
        w->raw = raw;
        w->timer = evtimer_new(S.base, waiter_timeout, w);
        double t = wait + wait / 16 * (random() / (double)RAND_MAX);
        struct timeval tv = {(time_t)t, (suseconds_t)((t - (time_t)t) * 1e6)};
        evtimer_add(w->timer, &tv);
        w->next = S.waiters;
        if (S.waiters)
            S.waiters->prev = w;
        S.waiters = w;
        evhttp_connection_set_closecb(evhttp_request_get_connection(req), waiter_gone, w);
        return;
    }
    kv_answer(req, key, recurse, raw);
}

/* ---- KV writes ---- */

static kv_entry *kv_new(const char *key, uint64_t index)
{
    kv_entry *e = xmalloc(sizeof *e);
    e->key = xstrdup(key);
    e->create_index = index;
    e->next = S.kvs;
    S.kvs = e;
    return e;
}

static void kv_set_value(kv_entry *e, const char *body, size_t len, uint64_t flags)
{
    free(e->value);
    e->value = len ? xmemdup(body, len) : NULL;
    e->len = len;
    e->flags = flags;
}

static bool kv_same(const kv_entry *e, const char *body, size_t len, uint64_t flags,
                    const char *session, uint64_t lock_index)
{
    return e->flags == flags && e->len == len && (!len || !memcmp(e->value, body, len)) &&
           !strcmp(e->session, session) && e->lock_index == lock_index;
}

/* A write that leaves the entry as it was is not stored (kvsSetTxn). */
static void kv_write(kv_entry *e, bool created, const char *body, size_t len, uint64_t flags,
                     const char *session, uint64_t lock_index, uint64_t index)
{
    if (!created && kv_same(e, body, len, flags, session, lock_index))
        return;
    kv_set_value(e, body, len, flags);
    snprintf(e->session, sizeof e->session, "%s", session);
    e->lock_index = lock_index;
    kv_touch(e, index);
}

static void kv_put(struct evhttp_request *req, const query *q, const char *key)
{
    if (!*key) {
        reply_error(req, 400, "Missing key name");
        return;
    }
    if (!acl_allows(req, q, "key:write", key))
        return;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len > MAX_VALUE_SIZE) {
        reply_error(req, 413, "Request body(%zu bytes) too large, max size: %d bytes", len,
                    MAX_VALUE_SIZE);
        return;
    }
    const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
    uint64_t flags = 0, cas = 0;
    const char *flags_s = query_get(q, "flags"), *cas_s = query_get(q, "cas");
    if (flags_s && parse_u64(flags_s, &flags)) {
        reply_error(req, 400, "Invalid flags: %s", flags_s);
        return;
    }
    if (cas_s && parse_u64(cas_s, &cas)) {
        reply_error(req, 400, "Invalid cas index: %s", cas_s);
        return;
    }
    /* As Consul's KVSPut reads them: cas overrides release overrides acquire. */
    const char *acquire = query_get(q, "acquire"), *release = query_get(q, "release");
    enum { SET, LOCK, UNLOCK, CAS } op = SET;
    if (acquire)
        op = LOCK;
    if (release)
        op = UNLOCK;
    if (cas_s)
        op = CAS;

    kv_entry *e = kv_find(key);
    bool ok = true;
    switch (op) {
    case LOCK: {
        /* Enforced before the Raft apply in Consul, so a refusal is a
         * plain false, not an error. */
        double left = lock_delay_left(key);
        if (left > 0) {
            if (S.verbose)
                logf_("rejecting lock of %s due to lock-delay (%.3fs left)", key, left);
            ok = false;
            break;
        }
        if (!*acquire) {
            reply_error(req, 500, "missing session");
            return;
        }
        if (!session_find(acquire)) {
            reply_error(req, 500, "invalid session \"%s\"", acquire);
            return;
        }
        uint64_t index = ++S.index;
        if (e && e->session[0] && strcmp(e->session, acquire)) {
            ok = false; /* someone else holds it */
        } else if (e) {
            /* re-acquiring our own lock updates the value, not LockIndex */
            uint64_t li = strcmp(e->session, acquire) ? e->lock_index + 1 : e->lock_index;
            kv_write(e, false, body, len, flags, acquire, li, index);
        } else {
            kv_write(kv_new(key, index), true, body, len, flags, acquire, 1, index);
        }
        break;
    }
    case UNLOCK:
        if (!*release) {
            reply_error(req, 500, "missing session");
            return;
        }
        if (!e || strcmp(e->session, release)) {
            ok = false;
            break;
        }
        kv_write(e, false, body, len, flags, "", e->lock_index, ++S.index);
        break;
    case CAS: {
        if ((cas == 0 && e) || (cas != 0 && (!e || e->modify_index != cas))) {
            ok = false;
            break;
        }
        uint64_t index = ++S.index;
        if (e)
            kv_write(e, false, body, len, flags, e->session, e->lock_index, index);
        else
            kv_write(kv_new(key, index), true, body, len, flags, "", 0, index);
        break;
    }
    case SET: {
        /* a plain write keeps whatever lock the key has */
        uint64_t index = ++S.index;
        if (e)
            kv_write(e, false, body, len, flags, e->session, e->lock_index, index);
        else
            kv_write(kv_new(key, index), true, body, len, flags, "", 0, index);
        break;
    }
    }
    reply_json(req, 200, json_boolean(ok));
}

static void kv_delete(struct evhttp_request *req, const query *q, const char *key)
{
    bool recurse = query_get(q, "recurse") != NULL;
    if (!acl_allows(req, q, "key:write", key))
        return;
    const char *cas_s = query_get(q, "cas");
    uint64_t cas = 0;
    if (cas_s && parse_u64(cas_s, &cas)) {
        reply_error(req, 400, "Invalid cas index: %s", cas_s);
        return;
    }
    bool ok = true;
    if (recurse) {
        uint64_t index = ++S.index;
        kv_entry *e = S.kvs;
        while (e) {
            kv_entry *next = e->next;
            if (has_prefix(e->key, key))
                kv_delete_entry(e, index);
            e = next;
        }
    } else {
        kv_entry *e = kv_find(key);
        if (cas_s) {
            /* a cas of 0 never deletes; a missing key counts as done */
            if (!e)
                ok = true;
            else if (cas == 0 || e->modify_index != cas)
                ok = false;
            else
                kv_delete_entry(e, ++S.index);
        } else if (e) {
            kv_delete_entry(e, ++S.index);
        }
    }
    reply_json(req, 200, json_boolean(ok));
}

/* ---- test hooks (not Consul's API) ---- */

/* PUT /v1/double/rewind?index=N: what a Raft snapshot restore looks like to
 * clients: every index drops to at most N and every blocking query returns
 * at once (Consul closes all watches on a restore). Clients must notice the
 * index going backwards and start their blocking loop again from 0. */
static void double_rewind(struct evhttp_request *req, const query *q)
{
    uint64_t to;
    if (!acl_allows(req, q, "operator:write", "rewind"))
        return;
    if (parse_u64(query_get(q, "index"), &to) || to == 0) {
        reply_error(req, 400, "want ?index=N with N > 0");
        return;
    }
    for (kv_entry *e = S.kvs; e; e = e->next) {
        if (e->modify_index > to)
            e->modify_index = to;
        if (e->create_index > to)
            e->create_index = to;
    }
    for (key_mark *t = S.tombstones; t; t = t->next)
        if (t->index > to)
            t->index = to;
    for (session *s = S.sessions; s; s = s->next) {
        if (s->modify_index > to)
            s->modify_index = to;
        if (s->create_index > to)
            s->create_index = to;
    }
    S.index = S.kv_index = S.session_index = to;
    logf_("rewound every index to %" PRIu64, to);
    while (S.waiters)
        waiter_reply(S.waiters);
    reply_json(req, 200, json_true());
}

/* PUT /v1/double/lockindex?key=K&index=N: sets K's LockIndex to N, as a
 * broken or hostile server could report it. Consul's LockIndex is a uint64
 * and this double writes it as a signed JSON integer, so N >= 2^63 shows
 * up as a negative LockIndex: what a client must refuse. */
static void double_lockindex(struct evhttp_request *req, const query *q)
{
    uint64_t to;
    const char *key = query_get(q, "key");
    kv_entry *e = key ? kv_find(key) : NULL;
    if (!acl_allows(req, q, "operator:write", "lockindex"))
        return;
    if (!e || parse_u64(query_get(q, "index"), &to)) {
        reply_error(req, 400, "want ?key=K&index=N for an existing key K");
        return;
    }
    e->lock_index = to;
    reply_json(req, 200, json_true());
}

/* ---- routing ---- */

static bool method_is(struct evhttp_request *req, enum evhttp_cmd_type want)
{
    if (evhttp_request_get_command(req) == want)
        return true;
    reply_error(req, 405, "method not allowed");
    return false;
}

static void route(struct evhttp_request *req, void *arg)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *raw_path = evhttp_uri_get_path(uri);
    if (!raw_path)
        raw_path = "/";
    char *path = url_decode(raw_path, strlen(raw_path), false);
    query q;
    query_parse(&q, evhttp_uri_get_query(uri));
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);

    if (has_prefix(path, "/v1/kv/")) {
        const char *key = path + strlen("/v1/kv/");
        if (cmd == EVHTTP_REQ_GET)
            kv_get(req, &q, key);
        else if (cmd == EVHTTP_REQ_PUT)
            kv_put(req, &q, key);
        else if (cmd == EVHTTP_REQ_DELETE)
            kv_delete(req, &q, key);
        else
            reply_error(req, 405, "method not allowed");
    } else if (!strcmp(path, "/v1/session/create")) {
        if (method_is(req, EVHTTP_REQ_PUT))
            session_create(req, &q);
    } else if (has_prefix(path, "/v1/session/destroy/")) {
        if (method_is(req, EVHTTP_REQ_PUT))
            session_destroy(req, &q, path + strlen("/v1/session/destroy/"));
    } else if (has_prefix(path, "/v1/session/renew/")) {
        if (method_is(req, EVHTTP_REQ_PUT))
            session_renew(req, &q, path + strlen("/v1/session/renew/"));
    } else if (has_prefix(path, "/v1/session/info/")) {
        if (method_is(req, EVHTTP_REQ_GET))
            session_info(req, &q, path + strlen("/v1/session/info/"));
    } else if (!strcmp(path, "/v1/session/list")) {
        if (method_is(req, EVHTTP_REQ_GET))
            session_list(req, &q);
    } else if (!strcmp(path, "/v1/double/rewind")) {
        if (method_is(req, EVHTTP_REQ_PUT))
            double_rewind(req, &q);
    } else if (!strcmp(path, "/v1/double/lockindex")) {
        if (method_is(req, EVHTTP_REQ_PUT))
            double_lockindex(req, &q);
    } else if (!strcmp(path, "/v1/status/leader")) {
        /* needs no token, as in Consul: the specs poll it for readiness */
        reply_json(req, 200, json_string("127.0.0.1:8300"));
    } else {
        log_reply(req, 404);
        evhttp_send_error(req, 404, NULL);
    }
    query_free(&q);
    free(path);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    event_base_loopexit(S.base, NULL);
}

static void usage(void)
{
    fprintf(stderr, "usage: consul-double --port P [--bind ADDR] [--acl-token T] [--node NAME] "
                    "[--verbose]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"port", required_argument, NULL, 'p'},      {"bind", required_argument, NULL, 'b'},
        {"acl-token", required_argument, NULL, 't'}, {"node", required_argument, NULL, 'n'},
        {"verbose", no_argument, NULL, 'v'},         {NULL, 0, NULL, 0},
    };
    const char *bind = "127.0.0.1";
    long port = 0;
    S.node = "consul-double";
    for (int c; (c = getopt_long(argc, argv, "p:b:t:n:v", opts, NULL)) != -1;) {
        switch (c) {
        case 'p':
            port = strtol(optarg, NULL, 10);
            break;
        case 'b':
            bind = optarg;
            break;
        case 't':
            S.acl_token = optarg;
            break;
        case 'n':
            S.node = optarg;
            break;
        case 'v':
            S.verbose = true;
            break;
        default:
            usage();
        }
    }
    if (port <= 0 || port > 65535 || optind != argc)
        usage();

    signal(SIGPIPE, SIG_IGN);
    srandom((unsigned)time(NULL) ^ (unsigned)getpid());
    S.base = event_base_new();
    struct evhttp *http = evhttp_new(S.base);
    if (!S.base || !http)
        return 1;
    /* Blocking queries hold a request for up to 10 min + wait/16: evhttp's
     * default 50 s connection timeout would cut them off. */
    evhttp_set_timeout(http, (int)(MAX_WAIT + MAX_WAIT / 16) + 30);
    evhttp_set_max_body_size(http, MAX_VALUE_SIZE * 2);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                         EVHTTP_REQ_POST | EVHTTP_REQ_HEAD);
    evhttp_set_gencb(http, route, NULL);
    if (evhttp_bind_socket(http, bind, (unsigned short)port)) {
        logf_("cannot listen on %s:%ld: %s", bind, port, strerror(errno));
        return 1;
    }
    struct event *sigterm = evsignal_new(S.base, SIGTERM, on_signal, NULL);
    struct event *sigint = evsignal_new(S.base, SIGINT, on_signal, NULL);
    evsignal_add(sigterm, NULL);
    evsignal_add(sigint, NULL);
    logf_("listening on %s:%ld%s (session TTLs expire after exactly TTL, not Consul's 2x)", bind,
          port, S.acl_token ? ", ACLs on" : "");

    event_base_dispatch(S.base);

    event_free(sigterm);
    event_free(sigint);
    while (S.waiters)
        waiter_free(S.waiters);
    evhttp_free(http);
    event_base_free(S.base);
    return 0;
}
