/* Metrics and health of the elections of this process, read straight from
 * the engine's counters when scraped (nothing is kept in between).
 *
 * /healthz follows client-go's leader-election health adaptor: it fails
 * while a leader's renewal is overdue, and also while the store is
 * failing (an election waiting to retry, or a store error not followed by
 * any successful answer), so a supervisor can restart a node whose store
 * session is down. */
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "engine.h"
#include "loop.h"
#include "lua_election.h"

#define METRICS_METATABLE "leadership.metrics"

typedef struct metrics_entry {
    ls_election *e; /* valid while ref holds its Lua object */
    int ref;
    char *node;
} metrics_entry;

typedef struct metrics_server {
    struct evhttp *http;
    struct evhttp_bound_socket *socket;
    metrics_entry *entries;
    size_t nentries;
} metrics_server;

/* ---- rendering ---- */

/* A label value with \, " and newline escaped, as the format wants. */
static void add_label(struct evbuffer *out, const char *value)
{
    for (const char *p = value; *p; p++) {
        if (*p == '\\' || *p == '"')
            evbuffer_add_printf(out, "\\%c", *p);
        else if (*p == '\n')
            evbuffer_add(out, "\\n", 2);
        else
            evbuffer_add(out, p, 1);
    }
}

static void add_labels(struct evbuffer *out, const metrics_entry *m, const char *extra_name,
                       const char *extra_value)
{
    evbuffer_add(out, "{key=\"", 6);
    add_label(out, ls_election_key(m->e));
    evbuffer_add(out, "\",node=\"", 8);
    add_label(out, m->node);
    evbuffer_add(out, "\"", 1);
    if (extra_name) {
        evbuffer_add_printf(out, ",%s=\"", extra_name);
        add_label(out, extra_value);
        evbuffer_add(out, "\"", 1);
    }
    evbuffer_add(out, "}", 1);
}

static void add_family(struct evbuffer *out, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One sample per election of a gauge or counter whose value `get` reads. */
static void add_simple(struct evbuffer *out, const metrics_server *s, const char *name,
                       const char *type, const char *help, double (*get)(ls_election *))
{
    add_family(out, name, type, help);
    for (size_t i = 0; i < s->nentries; i++) {
        evbuffer_add_printf(out, "%s", name);
        add_labels(out, &s->entries[i], NULL, NULL);
        evbuffer_add_printf(out, " %.9g\n", get(s->entries[i].e));
    }
}

static double get_is_leader(ls_election *e) { return ls_election_is_leader(e) ? 1 : 0; }
static double get_term(ls_election *e) { return (double)ls_election_term(e); }
static double get_errors(ls_election *e) { return (double)ls_election_counters_of(e)->errors; }
static double get_renewals(ls_election *e) { return (double)ls_election_counters_of(e)->renewals; }
static double get_deadline_left(ls_election *e)
{
    double deadline = ls_election_deadline(e);
    return deadline > 0 && deadline > ls_now() ? deadline - ls_now() : 0;
}

static void render_metrics(const metrics_server *s, struct evbuffer *out)
{
    add_simple(out, s, "leadership_is_leader", "gauge",
               "1 while this process leads the key (its local deadline not passed), else 0.",
               get_is_leader);
    add_simple(out, s, "leadership_term", "gauge",
               "Fencing token of the current leadership; 0 when not leader.", get_term);
    add_simple(out, s, "leadership_deadline_seconds", "gauge",
               "Seconds left before the local deadline unless a renewal moves it; 0 when not "
               "leader.",
               get_deadline_left);
    add_family(out, "leadership_transitions_total", "counter",
               "Leadership transitions of this process: event=\"elected\" or \"lost\".");
    for (size_t i = 0; i < s->nentries; i++) {
        const ls_election_counters *c = ls_election_counters_of(s->entries[i].e);
        evbuffer_add(out, "leadership_transitions_total", 28);
        add_labels(out, &s->entries[i], "event", "elected");
        evbuffer_add_printf(out, " %llu\n", (unsigned long long)c->elected);
        evbuffer_add(out, "leadership_transitions_total", 28);
        add_labels(out, &s->entries[i], "event", "lost");
        evbuffer_add_printf(out, " %llu\n", (unsigned long long)c->lost);
    }
    add_simple(out, s, "leadership_store_errors_total", "counter",
               "Store errors seen (each is also logged and passed to on_error).", get_errors);
    add_simple(out, s, "leadership_renewals_total", "counter", "Acknowledged lease renewals.",
               get_renewals);
    add_family(out, "leadership_renewal_latency_seconds", "histogram",
               "Time from sending a renewal to its acknowledgement.");
    for (size_t i = 0; i < s->nentries; i++) {
        const ls_election_counters *c = ls_election_counters_of(s->entries[i].e);
        unsigned long long cumulative = 0;
        for (int b = 0; b < 12; b++) {
            cumulative += c->latency_buckets[b];
            char le[32];
            if (b == 11)
                strcpy(le, "+Inf");
            else
                snprintf(le, sizeof le, "%g", ls_latency_bounds[b]);
            evbuffer_add_printf(out, "leadership_renewal_latency_seconds_bucket");
            add_labels(out, &s->entries[i], "le", le);
            evbuffer_add_printf(out, " %llu\n", cumulative);
        }
        evbuffer_add_printf(out, "leadership_renewal_latency_seconds_sum");
        add_labels(out, &s->entries[i], NULL, NULL);
        evbuffer_add_printf(out, " %.9g\n", c->latency_sum);
        evbuffer_add_printf(out, "leadership_renewal_latency_seconds_count");
        add_labels(out, &s->entries[i], NULL, NULL);
        evbuffer_add_printf(out, " %llu\n", (unsigned long long)c->renewals);
    }
}

/* Why e is unhealthy, or NULL. */
static const char *unhealthy(ls_election *e)
{
    bool leader = ls_election_is_leader(e); /* steps down if past its deadline */
    const ls_election_counters *c = ls_election_counters_of(e);
    switch (ls_election_state(e)) {
    case LS_IDLE:
        return "not running";
    case LS_STOPPED:
        return "stopped";
    case LS_BACKOFF:
        return "store failing: waiting to retry";
    default:
        break;
    }
    if (c->last_error > c->last_ok)
        return "store failing";
    /* backends renew every ttl/3: half a ttl without an answer is one
     * renewal late by a sixth of the ttl */
    if (leader && ls_now() - c->last_ok > ls_election_view(e)->ttl / 2)
        return "leader renewal overdue";
    return NULL;
}

static int render_health(const metrics_server *s, struct evbuffer *out)
{
    int code = 200;
    for (size_t i = 0; i < s->nentries; i++) {
        const char *why = unhealthy(s->entries[i].e);
        if (!why)
            continue;
        code = 503;
        evbuffer_add_printf(out, "key %s: %s\n", ls_election_key(s->entries[i].e), why);
    }
    if (code == 200)
        evbuffer_add(out, "ok\n", 3);
    return code;
}

static void request_cb(struct evhttp_request *req, void *arg)
{
    metrics_server *s = arg;
    struct evbuffer *out = evbuffer_new();
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    int code;
    const char *reason;
    if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD) {
        code = 405, reason = "Method Not Allowed";
        evhttp_add_header(headers, "Allow", "GET, HEAD");
        evbuffer_add_printf(out, "GET or HEAD only\n");
    } else if (path && !strcmp(path, "/metrics")) {
        code = 200, reason = "OK";
        render_metrics(s, out);
        evhttp_add_header(headers, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    } else if (path && !strcmp(path, "/healthz")) {
        code = render_health(s, out);
        reason = code == 200 ? "OK" : "Service Unavailable";
    } else {
        code = 404, reason = "Not Found";
        evbuffer_add_printf(out, "/metrics or /healthz\n");
    }
    if (!evhttp_find_header(headers, "Content-Type"))
        evhttp_add_header(headers, "Content-Type", "text/plain; charset=utf-8");
    evhttp_add_header(headers, "Cache-Control", "no-store");
    evhttp_send_reply(req, code, reason, out);
    evbuffer_free(out);
}

/* ---- the Lua object ---- */

/* Splits "host:port", ":port" or "[v6]:port"; host "" means every
 * interface. -1 on anything else. */
static int split_address(const char *address, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(address, ':');
    if (!colon)
        return -1;
    const char *start = address, *end = colon;
    if (*start == '[') {
        if (end - start < 2 || end[-1] != ']')
            return -1;
        start++, end--;
    }
    size_t len = (size_t)(end - start);
    if (len >= hostlen || memchr(start, ']', len))
        return -1;
    memcpy(host, start, len);
    host[len] = '\0';
    char *tail;
    long p = strtol(colon + 1, &tail, 10);
    if (colon[1] == '\0' || *tail || p < 0 || p > 65535)
        return -1;
    *port = (int)p;
    return 0;
}

static metrics_server *check_server(lua_State *L, int index)
{
    metrics_server *s = luaL_checkudata(L, index, METRICS_METATABLE);
    if (!s->http)
        luaL_argerror(L, index, "metrics server is closed");
    return s;
}

/* server:add(election, node) -> server   [-0, +1, e] */
static int metrics_add(lua_State *L)
{
    metrics_server *s = check_server(L, 1);
    ls_election *e = ls_lua_check_election(L, 2);
    const char *node = luaL_checkstring(L, 3);
    luaL_argcheck(L, e, 2, "election is closed");
    metrics_entry *grown = realloc(s->entries, (s->nentries + 1) * sizeof *grown);
    if (!grown)
        return luaL_error(L, "out of memory");
    s->entries = grown;
    lua_pushvalue(L, 2);
    /* the reference keeps the election object, so e, alive */
    s->entries[s->nentries++] = (metrics_entry){e, luaL_ref(L, LUA_REGISTRYINDEX), strdup(node)};
    lua_settop(L, 1);
    return 1;
}

/* server:address() -> "ADDR:PORT" as bound   [-0, +1, e] */
static int metrics_address(lua_State *L)
{
    metrics_server *s = check_server(L, 1);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (getsockname(evhttp_bound_socket_get_fd(s->socket), (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
            port = ntohs(a->sin6_port);
            lua_pushfstring(L, "[%s]:%d", host, port);
            return 1;
        }
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
    }
    lua_pushfstring(L, "%s:%d", host, port);
    return 1;
}

/* Idempotent; __gc, __close and close() end here.   [-0, +0, -] */
static int metrics_close(lua_State *L)
{
    metrics_server *s = luaL_checkudata(L, 1, METRICS_METATABLE);
    if (!s->http)
        return 0;
    evhttp_free(s->http);
    s->http = NULL;
    for (size_t i = 0; i < s->nentries; i++) {
        luaL_unref(L, LUA_REGISTRYINDEX, s->entries[i].ref);
        free(s->entries[i].node);
    }
    free(s->entries);
    s->entries = NULL;
    s->nentries = 0;
    return 0;
}

int ls_lua_metrics_new(lua_State *L)
{
    const char *address = luaL_checkstring(L, 1);
    char host[256];
    int port;
    if (split_address(address, host, sizeof host, &port) < 0)
        return luaL_argerror(
            L, 1, lua_pushfstring(L, "'%s' is not ADDR:PORT (e.g. 127.0.0.1:9100)", address));
    metrics_server *s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    if (luaL_newmetatable(L, METRICS_METATABLE)) {
        static const luaL_Reg methods[] = {
            {"add", metrics_add},
            {"address", metrics_address},
            {"close", metrics_close},
            {NULL, NULL},
        };
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, metrics_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, metrics_close);
        lua_setfield(L, -2, "__close");
    }
    lua_setmetatable(L, -2);
    s->http = evhttp_new(ls_loop_base());
    errno = 0;
    s->socket = evhttp_bind_socket_with_handle(s->http, host[0] ? host : "0.0.0.0", (uint16_t)port);
    if (!s->socket) {
        int e = errno;
        evhttp_free(s->http);
        s->http = NULL;
        lua_pushnil(L);
        lua_pushfstring(L, "metrics: cannot listen on %s: %s", address,
                        e ? strerror(e) : "bad address");
        return 2;
    }
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE);
    evhttp_set_gencb(s->http, request_cb, s);
    evhttp_set_timeout(s->http, 10);
    return 1;
}
