/* libcurl's multi socket interface on the libevent loop, the way curl's
 * docs/examples/hiperfifo.c does it: libcurl tells us (on_socket) which
 * sockets to watch and (on_timer) when to wake it; we tell it what
 * happened with curl_multi_socket_action.
 *
 * Callers' callbacks never run inside libcurl: stream data is buffered by
 * the write callback and handed out, like completions, by dispatch() after
 * curl_multi_socket_action returns. A callback may cancel any request or
 * free the client; frees are deferred until the outermost dispatch ends
 * (the re-entrancy guard of hiredis's adapters/libevent.h).
 */
#include "http.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"

typedef struct buffer {
    char *data;
    size_t len, cap;
} buffer;

struct ls_http {
    CURLM *multi;
    struct event *timer; /* the one non-repeating timer libcurl asks for */
    char *ca, *cert, *key;
    double connect_timeout;
    unsigned connections;                /* open sockets, counted by open/close callbacks */
    long max_in_flight;                  /* 0: no limit */
    long in_flight;                      /* requests handed to libcurl */
    ls_http_request *queue, *queue_tail; /* waiting for a slot, oldest first */
    ls_http_request *failed;             /* libcurl refused them: reported by dispatch */
    struct event *kick;                  /* runs dispatch for them */
    bool shutting;                       /* client_free is under way: start nothing */
    int depth;                           /* dispatch() frames on the stack */
    bool freeing;                        /* ls_http_free was called inside a dispatch */
    ls_http_request *requests;           /* every live request, for ls_http_free */
    ls_http_request *ready;              /* streams with buffered response data */
    ls_http_request *graveyard;          /* finished or cancelled, freed when depth is 0 */
};

struct ls_http_request {
    ls_http *http;
    CURL *easy;
    struct curl_slist *headers;
    ls_http_done_fn done;
    ls_http_data_fn data;
    void *arg;
    double sent_at;
    bool cancelled; /* no callback any more */
    bool retired;   /* off the multi handle and the live list */
    bool in_ready;
    bool queued;     /* waiting in http->queue */
    bool added;      /* on the multi handle */
    buffer response; /* unary: the body; stream: data not yet handed out */
    buffer upload;   /* stream: request body not yet taken by libcurl */
    size_t upload_off;
    bool paused;           /* the read callback returned CURL_READFUNC_PAUSE */
    bool body_too_long;    /* unary: cut off at MAX_BODY_MB */
    bool body_started;     /* header lines after it are trailers */
    bool too_many_headers; /* cut off at MAX_RESPONSE_HEADERS */
    ls_http_header *resp_headers;
    size_t nresp_headers, resp_headers_cap;
    ls_http_request *prev, *next; /* http->requests */
    ls_http_request *ready_next;
    ls_http_request *grave_next;
    ls_http_request *queue_next;
    char errbuf[CURL_ERROR_SIZE];
};

/* Per-socket context, attached with curl_multi_assign. */
typedef struct http_socket {
    ls_http *http;
    struct event *ev;
} http_socket;

static void buffer_add(buffer *b, const char *data, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len + 1)
            cap *= 2;
        b->data = realloc(b->data, cap);
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

static void buffer_free(buffer *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static void check_multi(ls_http *http, CURLMcode rc, const char *what)
{
    if (rc != CURLM_OK)
        ls_log(LS_ERROR, "http: %s failed: %s", what, curl_multi_strerror(rc));
}

/* ---- the loop side: sockets and the timer ---- */

static void dispatch(ls_http *http);

static void on_event(evutil_socket_t fd, short kind, void *arg)
{
    ls_http *http = arg;
    int action = (kind & EV_READ ? CURL_CSELECT_IN : 0) | (kind & EV_WRITE ? CURL_CSELECT_OUT : 0);
    int running;
    check_multi(http, curl_multi_socket_action(http->multi, fd, action, &running), "socket action");
    dispatch(http);
}

static void on_kick(evutil_socket_t fd, short kind, void *arg) { dispatch(arg); }

static void on_timeout(evutil_socket_t fd, short kind, void *arg)
{
    ls_http *http = arg;
    int running;
    check_multi(http, curl_multi_socket_action(http->multi, CURL_SOCKET_TIMEOUT, 0, &running),
                "timeout action");
    dispatch(http);
}

/* CURLMOPT_TIMERFUNCTION: one timer, re-armed or removed on request. */
static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    ls_http *http = userp;
    if (timeout_ms < 0) {
        evtimer_del(http->timer);
    } else {
        struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
        evtimer_add(http->timer, &tv);
    }
    return 0;
}

/* CURLMOPT_SOCKETFUNCTION: watch s for what libcurl wants. */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    ls_http *http = userp;
    http_socket *sock = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (sock) {
            event_free(sock->ev);
            free(sock);
        }
        return 0;
    }
    short kind =
        EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    if (!sock) {
        sock = calloc(1, sizeof *sock);
        sock->http = http;
        check_multi(http, curl_multi_assign(http->multi, s, sock), "assign");
    } else {
        event_free(sock->ev);
    }
    sock->ev = event_new(ls_loop_base(), s, kind, on_event, http);
    event_add(sock->ev, NULL);
    return 0;
}

/* Connections are counted where libcurl opens and closes them, so the
 * count is exact whatever the pool does. */
static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    ls_http *http = clientp;
    curl_socket_t s = socket(a->family, a->socktype, a->protocol);
    if (s != CURL_SOCKET_BAD)
        http->connections++;
    return s;
}

static int on_close_socket(void *clientp, curl_socket_t s)
{
    ls_http *http = clientp;
    http->connections--;
    return close(s);
}

/* ---- libcurl's per-transfer callbacks (inside libcurl: no caller code) ---- */

/* A body is held whole until its transfer ends: a server sending without
 * end would take all the memory there is. No store's answer comes near. */
#define MAX_BODY_MB 64
#define STRINGIFY(x) STRINGIFY_(x)
#define STRINGIFY_(x) #x

static size_t on_write(char *data, size_t size, size_t n, void *userp)
{
    ls_http_request *req = userp;
    req->body_started = true;
    if (!req->data && req->response.len + size * n > (size_t)MAX_BODY_MB << 20) {
        req->body_too_long = true;
        return 0; /* libcurl ends the transfer with an error */
    }
    buffer_add(&req->response, data, size * n);
    if (req->data && !req->in_ready) {
        req->in_ready = true;
        req->ready_next = req->http->ready;
        req->http->ready = req;
    }
    return size * n;
}

/* Stores send a handful of headers. libcurl bounds their bytes (300 KB),
 * not their count, and each one kept costs two allocations. */
#define MAX_RESPONSE_HEADERS 100

static size_t on_header(char *line, size_t size, size_t n, void *userp)
{
    ls_http_request *req = userp;
    size_t len = size * n;
    /* trailers after a chunked body: nothing of ours reads them, and
     * libcurl sets them no limit */
    if (req->body_started)
        return len;
    if (len >= 5 && !strncmp(line, "HTTP/", 5)) {
        /* a new response (after 100 Continue or a redirect): forget the old */
        for (size_t i = 0; i < req->nresp_headers; i++) {
            free(req->resp_headers[i].name);
            free(req->resp_headers[i].value);
        }
        req->nresp_headers = 0;
        return len;
    }
    const char *colon = memchr(line, ':', len);
    if (!colon)
        return len;
    const char *v = colon + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    if (req->nresp_headers == MAX_RESPONSE_HEADERS) {
        req->too_many_headers = true;
        return 0; /* libcurl ends the transfer with an error */
    }
    if (req->nresp_headers == req->resp_headers_cap) {
        req->resp_headers_cap = req->resp_headers_cap ? 2 * req->resp_headers_cap : 8;
        req->resp_headers =
            realloc(req->resp_headers, req->resp_headers_cap * sizeof *req->resp_headers);
    }
    ls_http_header *h = &req->resp_headers[req->nresp_headers++];
    h->name = strndup(line, (size_t)(colon - line));
    h->value = strndup(v, (size_t)(end - v));
    return len;
}

static size_t on_read(char *out, size_t size, size_t n, void *userp)
{
    ls_http_request *req = userp;
    size_t avail = req->upload.len - req->upload_off;
    if (avail == 0) {
        req->paused = true;
        return CURL_READFUNC_PAUSE;
    }
    size_t len = size * n < avail ? size * n : avail;
    memcpy(out, req->upload.data + req->upload_off, len);
    req->upload_off += len;
    if (req->upload_off == req->upload.len)
        req->upload.len = req->upload_off = 0;
    return len;
}

/* ---- request lifetime ---- */

static void request_free(ls_http_request *req)
{
    if (req->easy)
        curl_easy_cleanup(req->easy);
    curl_slist_free_all(req->headers);
    buffer_free(&req->response);
    buffer_free(&req->upload);
    for (size_t i = 0; i < req->nresp_headers; i++) {
        free(req->resp_headers[i].name);
        free(req->resp_headers[i].value);
    }
    free(req->resp_headers);
    free(req);
}

/* Takes req off the multi handle and the live list; frees it now or, if
 * a dispatch is on the stack (it may hold req), when the last one ends. */
static void pump(ls_http *http);

static void request_retire(ls_http_request *req)
{
    ls_http *http = req->http;
    if (req->retired)
        return;
    req->retired = true;
    req->cancelled = true;
    if (req->queued) {
        ls_http_request **p = &http->queue, *prev = NULL;
        while (*p != req) {
            prev = *p;
            p = &(*p)->queue_next;
        }
        *p = req->queue_next;
        if (http->queue_tail == req)
            http->queue_tail = prev;
        req->queued = false;
    }
    for (ls_http_request **p = &http->failed; *p; p = &(*p)->queue_next) {
        if (*p == req) {
            *p = req->queue_next;
            break;
        }
    }
    if (req->in_ready) {
        ls_http_request **p = &http->ready;
        while (*p != req)
            p = &(*p)->ready_next;
        *p = req->ready_next;
        req->in_ready = false;
    }
    if (req->added) {
        check_multi(http, curl_multi_remove_handle(http->multi, req->easy), "remove handle");
        req->added = false;
        http->in_flight--;
    }
    if (req->easy) {
        curl_easy_cleanup(req->easy);
        req->easy = NULL;
    }
    if (req->prev)
        req->prev->next = req->next;
    else if (http->requests == req)
        http->requests = req->next;
    if (req->next)
        req->next->prev = req->prev;
    req->prev = req->next = NULL;
    if (http->depth > 0) {
        req->grave_next = http->graveyard;
        http->graveyard = req;
    } else {
        request_free(req);
    }
    pump(http);
}

static void client_free(ls_http *http)
{
    http->shutting = true;
    while (http->requests)
        request_retire(http->requests);
    while (http->graveyard) {
        ls_http_request *r = http->graveyard;
        http->graveyard = r->grave_next;
        request_free(r);
    }
    /* closes the pooled connections through on_close_socket */
    check_multi(http, curl_multi_cleanup(http->multi), "cleanup");
    event_free(http->timer);
    event_free(http->kick);
    free(http->ca);
    free(http->cert);
    free(http->key);
    free(http);
}

static void fill_response(ls_http_request *req, ls_http_response *res, CURLcode code)
{
    memset(res, 0, sizeof *res);
    curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &res->status);
    if (!req->data) {
        res->body = req->response.data ? req->response.data : "";
        res->len = req->response.len;
    }
    if (req->body_too_long)
        res->error = "the response body is over " STRINGIFY(MAX_BODY_MB) " MB";
    else if (req->too_many_headers)
        res->error = "the response has over " STRINGIFY(MAX_RESPONSE_HEADERS) " headers";
    else if (code != CURLE_OK)
        res->error = req->errbuf[0] ? req->errbuf : curl_easy_strerror(code);
    /* a transfer that failed part-way is no answer, whatever its status
     * line said: callers that look at the status first see none */
    if (res->error)
        res->status = 0;
    res->sent_at = req->sent_at;
    res->headers = req->resp_headers;
    res->nheaders = req->nresp_headers;
}

/* Hands buffered stream data, then finished transfers, to their callers. */
static void dispatch(ls_http *http)
{
    http->depth++;
    while (http->failed && !http->freeing) {
        ls_http_request *req = http->failed;
        http->failed = req->queue_next;
        ls_http_response res = {.error = req->errbuf, .sent_at = req->sent_at};
        req->cancelled = true;
        req->done(req->arg, &res);
        request_retire(req);
    }
    while (http->ready && !http->freeing) {
        ls_http_request *req = http->ready;
        http->ready = req->ready_next;
        req->in_ready = false;
        if (req->response.len == 0)
            continue;
        buffer chunk = req->response;
        req->response = (buffer){0};
        req->data(req->arg, chunk.data, chunk.len);
        buffer_free(&chunk);
    }
    CURLMsg *msg;
    int left;
    while (!http->freeing && (msg = curl_multi_info_read(http->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        ls_http_request *req;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&req);
        CURLcode code = msg->data.result;
        /* stream data that came with the end goes out first */
        if (req->data && req->response.len > 0) {
            buffer chunk = req->response;
            req->response = (buffer){0};
            req->data(req->arg, chunk.data, chunk.len);
            buffer_free(&chunk);
            if (req->cancelled || http->freeing)
                continue;
        }
        ls_http_response res;
        fill_response(req, &res, code);
        ls_http_done_fn done = req->done;
        void *arg = req->arg;
        /* the caller may cancel it from its callback: that must be a no-op */
        req->cancelled = true;
        done(arg, &res);
        request_retire(req);
    }
    if (--http->depth == 0) {
        while (http->graveyard) {
            ls_http_request *r = http->graveyard;
            http->graveyard = r->grave_next;
            request_free(r);
        }
        if (http->freeing)
            client_free(http);
    }
}

/* ---- public ---- */

ls_http *ls_http_new(const ls_http_options *opts, char *err, size_t errlen)
{
    static bool global_init;
    if (!global_init) {
        CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
        if (rc != CURLE_OK) {
            snprintf(err, errlen, "libcurl initialisation failed: %s", curl_easy_strerror(rc));
            return NULL;
        }
        global_init = true;
    }
    ls_http *http = calloc(1, sizeof *http);
    http->multi = curl_multi_init();
    if (!http->multi) {
        snprintf(err, errlen, "libcurl: cannot create a multi handle");
        free(http);
        return NULL;
    }
    http->timer = evtimer_new(ls_loop_base(), on_timeout, http);
    http->kick = evtimer_new(ls_loop_base(), on_kick, http);
    CURLM *m = http->multi;
    CURLMcode rc = curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, on_socket);
    if (rc == CURLM_OK)
        rc = curl_multi_setopt(m, CURLMOPT_SOCKETDATA, http);
    if (rc == CURLM_OK)
        rc = curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, on_timer);
    if (rc == CURLM_OK)
        rc = curl_multi_setopt(m, CURLMOPT_TIMERDATA, http);
    if (rc == CURLM_OK && opts && opts->max_host_connections > 0) {
        rc = curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, opts->max_host_connections);
        /* keep no more idle ones than that either */
        if (rc == CURLM_OK)
            rc = curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, opts->max_host_connections);
    }
    if (rc != CURLM_OK) {
        snprintf(err, errlen, "libcurl: %s", curl_multi_strerror(rc));
        http->depth = 0;
        client_free(http);
        return NULL;
    }
    if (opts) {
        http->ca = opts->ca ? strdup(opts->ca) : NULL;
        http->cert = opts->cert ? strdup(opts->cert) : NULL;
        http->key = opts->key ? strdup(opts->key) : NULL;
        http->connect_timeout = opts->connect_timeout;
        http->max_in_flight = opts->max_in_flight;
    }
    return http;
}

void ls_http_free(ls_http *http)
{
    if (!http)
        return;
    if (http->depth > 0) {
        /* a callback of ours is on the stack: finish when it returns */
        http->freeing = true;
        while (http->requests)
            request_retire(http->requests);
        return;
    }
    client_free(http);
}

/* Seconds as libcurl's milliseconds, rounded up: 0 would mean no limit. */
static long whole_ms(double seconds)
{
    long ms = (long)ceil(seconds * 1000);
    return ms > 0 ? ms : 1;
}

static ls_http_request *request_new(ls_http *http, const char *method, const char *url,
                                    const char *const *headers, double timeout)
{
    ls_http_request *req = calloc(1, sizeof *req);
    req->http = http;
    req->easy = curl_easy_init();
    if (!req->easy) {
        free(req);
        return NULL;
    }
    CURL *c = req->easy;
    for (const char *const *h = headers; h && *h; h++)
        req->headers = curl_slist_append(req->headers, *h);
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (rc == CURLE_OK)                                                                        \
            rc = curl_easy_setopt(c, opt, val);                                                    \
    } while (0)
    SET(CURLOPT_URL, url);
    SET(CURLOPT_CUSTOMREQUEST, strcmp(method, "GET") && strcmp(method, "POST") ? method : NULL);
    SET(CURLOPT_HTTPHEADER, req->headers);
    SET(CURLOPT_PRIVATE, req);
    SET(CURLOPT_WRITEFUNCTION, on_write);
    SET(CURLOPT_WRITEDATA, req);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, req);
    SET(CURLOPT_ERRORBUFFER, req->errbuf);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    SET(CURLOPT_OPENSOCKETDATA, http);
    SET(CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    SET(CURLOPT_CLOSESOCKETDATA, http);
    SET(CURLOPT_TCP_NODELAY, 1L);
    /* long polls and streams sit idle: notice a peer that vanished */
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_TCP_KEEPIDLE, 10L);
    SET(CURLOPT_TCP_KEEPINTVL, 5L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    /* A timeout in the middle of a name lookup ends it: without this,
     * libcurl waits for its resolver thread there, inside our loop, for
     * as long as a DNS server that does not answer keeps it. */
    SET(CURLOPT_QUICK_EXIT, 1L);
    /* One request, one connection: over HTTP/2 (curl's default for https)
     * a timed-out request leaves the connection, dead or not, to the next. */
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    /* Stores are reached directly: a proxy from the environment
     * (http_proxy) may hold back a watch stream until it ends. */
    SET(CURLOPT_NOPROXY, "*");
    if (timeout > 0)
        SET(CURLOPT_TIMEOUT_MS, whole_ms(timeout));
    if (http->connect_timeout > 0)
        SET(CURLOPT_CONNECTTIMEOUT_MS, whole_ms(http->connect_timeout));
    if (http->ca)
        SET(CURLOPT_CAINFO, http->ca);
    if (http->cert)
        SET(CURLOPT_SSLCERT, http->cert);
    if (http->key)
        SET(CURLOPT_SSLKEY, http->key);
#undef SET
    if (rc != CURLE_OK) {
        ls_log(LS_ERROR, "http: setting up a request failed: %s", curl_easy_strerror(rc));
        request_free(req);
        return NULL;
    }
    return req;
}

/* Hands req to libcurl: its timeout runs from now. */
static void request_add(ls_http_request *req)
{
    ls_http *http = req->http;
    req->sent_at = ls_now();
    CURLMcode rc = curl_multi_add_handle(http->multi, req->easy);
    if (rc != CURLM_OK) {
        /* reported as a failure from the loop, never from inside a call */
        snprintf(req->errbuf, sizeof req->errbuf, "libcurl refused the request: %s",
                 curl_multi_strerror(rc));
        req->queue_next = http->failed;
        http->failed = req;
        struct timeval zero = {0, 0};
        evtimer_add(http->kick, &zero);
        return;
    }
    req->added = true;
    http->in_flight++;
}

/* Starts queued requests while there is room. */
static void pump(ls_http *http)
{
    while (http->queue && !http->shutting && !http->freeing &&
           (http->max_in_flight == 0 || http->in_flight < http->max_in_flight)) {
        ls_http_request *req = http->queue;
        http->queue = req->queue_next;
        if (!http->queue)
            http->queue_tail = NULL;
        req->queued = false;
        req->queue_next = NULL;
        request_add(req);
    }
}

static ls_http_request *request_start(ls_http_request *req)
{
    ls_http *http = req->http;
    req->next = http->requests;
    if (req->next)
        req->next->prev = req;
    http->requests = req;
    if (http->max_in_flight && http->in_flight >= http->max_in_flight) {
        /* wait for a slot, so the timeout counts only the exchange itself */
        req->queued = true;
        req->sent_at = ls_now();
        if (http->queue_tail)
            http->queue_tail->queue_next = req;
        else
            http->queue = req;
        http->queue_tail = req;
        return req;
    }
    request_add(req);
    return req;
}

ls_http_request *ls_http_send(ls_http *http, const char *method, const char *url,
                              const char *const *headers, const char *body, size_t len,
                              double timeout, ls_http_done_fn done, void *arg)
{
    ls_http_request *req = request_new(http, method, url, headers, timeout);
    if (!req)
        return NULL;
    req->done = done;
    req->arg = arg;
    if (body) {
        CURLcode rc = curl_easy_setopt(req->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(req->easy, CURLOPT_COPYPOSTFIELDS, body);
        if (rc != CURLE_OK) {
            ls_log(LS_ERROR, "http: setting a body failed: %s", curl_easy_strerror(rc));
            request_free(req);
            return NULL;
        }
    }
    return request_start(req);
}

ls_http_request *ls_http_stream(ls_http *http, const char *url, const char *const *headers,
                                ls_http_data_fn data, ls_http_done_fn done, void *arg)
{
    /* Expect: 100-continue keeps a Go HTTP/1.1 server (etcd's gateway)
     * from draining the open body before it answers: without it the
     * server reads, the client waits, and nothing moves. */
    const char *extra[] = {"Transfer-Encoding: chunked", "Expect: 100-continue", NULL};
    size_t n = 0;
    while (headers && headers[n])
        n++;
    const char **all = calloc(n + 3, sizeof *all);
    for (size_t i = 0; i < n; i++)
        all[i] = headers[i];
    all[n] = extra[0];
    all[n + 1] = extra[1];
    ls_http_request *req = request_new(http, "POST", url, all, 0);
    free(all);
    if (!req)
        return NULL;
    req->done = done;
    req->data = data;
    req->arg = arg;
    CURLcode rc = curl_easy_setopt(req->easy, CURLOPT_POST, 1L);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(req->easy, CURLOPT_READFUNCTION, on_read);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(req->easy, CURLOPT_READDATA, req);
    if (rc != CURLE_OK) {
        ls_log(LS_ERROR, "http: setting up a stream failed: %s", curl_easy_strerror(rc));
        request_free(req);
        return NULL;
    }
    return request_start(req);
}

void ls_http_stream_write(ls_http_request *req, const char *data, size_t len)
{
    if (!req || req->cancelled || len == 0)
        return;
    buffer_add(&req->upload, data, len);
    if (req->paused) {
        req->paused = false;
        CURLcode rc = curl_easy_pause(req->easy, CURLPAUSE_CONT);
        if (rc != CURLE_OK)
            ls_log(LS_ERROR, "http: unpausing a stream failed: %s", curl_easy_strerror(rc));
    }
}

void ls_http_cancel(ls_http_request *req)
{
    if (!req || req->cancelled)
        return;
    request_retire(req);
}

double ls_http_sent_at(const ls_http_request *req) { return req->sent_at; }

const char *ls_http_header_get(const ls_http_response *res, const char *name)
{
    for (size_t i = 0; i < res->nheaders; i++)
        if (!strcasecmp(res->headers[i].name, name))
            return res->headers[i].value;
    return NULL;
}

unsigned ls_http_connections(const ls_http *http) { return http->connections; }
