/* A stand-in for runtime/http.c in the fuzz targets of the HTTP backends
 * (etcd, Consul): requests are queued here instead of sent, and the target
 * answers them with status, headers and body from the fuzz input, feeds
 * stream data, or ends streams. Same contract as http.h: a callback never
 * runs from inside an ls_http_* call, and no callback follows a cancel. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../../runtime/http.h"
#include "../../runtime/loop.h"

struct ls_http {
    unsigned requests; /* live ones of this client */
};

struct ls_http_request {
    ls_http *http;
    bool stream;
    bool delivering; /* its done callback runs: a cancel now is a no-op */
    ls_http_done_fn done;
    ls_http_data_fn data;
    void *arg;
    double sent_at;
    char *url;
    ls_http_request *prev, *next;
};

static ls_http_request *fake_head, *fake_tail;
static unsigned fake_live_clients;

static void fake_unlink(ls_http_request *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        fake_head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        fake_tail = r->prev;
    r->prev = r->next = NULL;
    r->http->requests--;
}

static void fake_free(ls_http_request *r)
{
    free(r->url);
    free(r);
}

static ls_http_request *fake_new(ls_http *http, const char *url, bool stream, ls_http_done_fn done,
                                 ls_http_data_fn data, void *arg)
{
    ls_http_request *r = calloc(1, sizeof *r);
    r->http = http;
    r->stream = stream;
    r->done = done;
    r->data = data;
    r->arg = arg;
    r->sent_at = ls_now();
    r->url = strdup(url);
    r->prev = fake_tail;
    if (fake_tail)
        fake_tail->next = r;
    else
        fake_head = r;
    fake_tail = r;
    http->requests++;
    return r;
}

ls_http *ls_http_new(const ls_http_options *opts, char *err, size_t errlen)
{
    fake_live_clients++;
    return calloc(1, sizeof(ls_http));
}

void ls_http_free(ls_http *http)
{
    if (!http)
        return;
    for (ls_http_request *r = fake_head, *next; r; r = next) {
        next = r->next;
        if (r->http == http && !r->delivering) {
            fake_unlink(r);
            fake_free(r);
        }
    }
    fake_live_clients--;
    free(http);
}

/* With FUZZ_LOG set, what the backend sends, for writing seeds. */
static void fake_trace(const char *what, const char *method, const char *url, const char *body,
                       size_t len)
{
    if (getenv("FUZZ_LOG"))
        fprintf(stderr, "fake_http %s %s %s %.*s\n", what, method ? method : "", url, (int)len,
                body ? body : "");
}

ls_http_request *ls_http_send(ls_http *http, const char *method, const char *url,
                              const char *const *headers, const char *body, size_t len,
                              double timeout, ls_http_done_fn done, void *arg)
{
    fake_trace("send", method, url, body, len);
    return fake_new(http, url, false, done, NULL, arg);
}

ls_http_request *ls_http_stream(ls_http *http, const char *url, const char *const *headers,
                                ls_http_data_fn data, ls_http_done_fn done, void *arg)
{
    fake_trace("stream", "POST", url, NULL, 0);
    return fake_new(http, url, true, done, data, arg);
}

void ls_http_stream_write(ls_http_request *req, const char *data, size_t len)
{
    fake_trace("write", NULL, req->url, data, len);
}

void ls_http_cancel(ls_http_request *req)
{
    if (!req || req->delivering)
        return;
    fake_unlink(req);
    fake_free(req);
}

double ls_http_sent_at(const ls_http_request *req) { return req->sent_at; }

const char *ls_http_header_get(const ls_http_response *res, const char *name)
{
    for (size_t i = 0; i < res->nheaders; i++)
        if (!strcasecmp(res->headers[i].name, name))
            return res->headers[i].value;
    return NULL;
}

unsigned ls_http_connections(const ls_http *http) { return 0; }

/* ---- for the fuzz target ---- */

static unsigned fake_pending(bool streams)
{
    unsigned n = 0;
    for (ls_http_request *r = fake_head; r; r = r->next)
        n += r->stream == streams;
    return n;
}

/* The i-th (modulo) pending unary request, or NULL. */
static ls_http_request *fake_unary(unsigned i)
{
    unsigned n = fake_pending(false);
    if (n == 0)
        return NULL;
    i %= n;
    for (ls_http_request *r = fake_head; r; r = r->next)
        if (!r->stream && i-- == 0)
            return r;
    return NULL;
}

/* The newest stream, or NULL. */
static ls_http_request *fake_stream(void)
{
    for (ls_http_request *r = fake_tail; r; r = r->prev)
        if (r->stream)
            return r;
    return NULL;
}

/* Ends r with this response (status 0 and `error`: a transport failure). */
static void fake_finish(ls_http_request *r, long status, const char *error, const char *body,
                        size_t len, const ls_http_header *headers, size_t nheaders)
{
    char *copy = malloc(len + 1); /* NUL-terminated, as http.c hands bodies over */
    memcpy(copy, body, len);
    copy[len] = '\0';
    ls_http_response res = {.status = status,
                            .body = r->stream ? NULL : copy,
                            .len = r->stream ? 0 : len,
                            .error = error,
                            .sent_at = r->sent_at,
                            .headers = headers,
                            .nheaders = nheaders};
    fake_unlink(r);
    r->delivering = true;
    r->done(r->arg, &res);
    fake_free(r);
    free(copy);
}

/* Some of a stream's response body. */
static void fake_stream_data(ls_http_request *r, const char *data, size_t len)
{
    r->data(r->arg, data, len);
}
