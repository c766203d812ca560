/* An asynchronous HTTP client on the process's libevent loop: libcurl's
 * multi socket interface (as curl's docs/examples/hiperfifo.c drives it),
 * shared by the HTTP-speaking backends (etcd, Consul).
 *
 * Every callback runs on the loop thread, never from inside a libcurl
 * call, so a callback may send, cancel or free freely (even its own client).
 */
#ifndef LEADERSHIP_HTTP_H
#define LEADERSHIP_HTTP_H

#include <stdbool.h>
#include <stddef.h>

typedef struct ls_http ls_http;
typedef struct ls_http_request ls_http_request;

typedef struct ls_http_options {
    const char *ca;            /* PEM file of CAs to trust, or NULL: system store */
    const char *cert, *key;    /* client certificate and key (PEM), or NULL */
    long max_host_connections; /* per host:port; 0: no limit */
    /* at most this many requests at once, later ones wait in order and
     * their timeout starts only when they go out; 0: no limit */
    long max_in_flight;
    double connect_timeout; /* seconds; 0: libcurl's default */
} ls_http_options;

typedef struct ls_http_header {
    char *name, *value;
} ls_http_header;

/* What came back. The pointers live until the callback returns. */
typedef struct ls_http_response {
    long status;      /* HTTP status, 0 if there was no response */
    const char *body; /* NUL-terminated (streams: NULL, data went to `data`) */
    size_t len;
    const char *error;             /* transport failure (connect, timeout, TLS), or NULL */
    double sent_at;                /* ls_now() when the request was sent (local deadline) */
    const ls_http_header *headers; /* response headers of the last response */
    size_t nheaders;
} ls_http_response;

/* Called once per request unless it was cancelled first. */
typedef void (*ls_http_done_fn)(void *arg, const ls_http_response *res);

/* Called for every piece of a stream's response body, as it arrives
 * (no framing: the caller splits messages). */
typedef void (*ls_http_data_fn)(void *arg, const char *data, size_t len);

/* A client with its own connection pool; the strings in opts are copied.
 * NULL with a message if libcurl refuses the options. */
ls_http *ls_http_new(const ls_http_options *opts, char *err, size_t errlen);

/* Cancels every request (no callbacks) and closes the connections. */
void ls_http_free(ls_http *http);

/* Sends one request: method "GET" "PUT" "POST" "DELETE"; headers a
 * NULL-terminated list of "Name: value" (or NULL); body copied (may be
 * NULL). timeout in seconds for the whole exchange (0: none). NULL only
 * if libcurl refuses to set the request up (logged). */
ls_http_request *ls_http_send(ls_http *http, const char *method, const char *url,
                              const char *const *headers, const char *body, size_t len,
                              double timeout, ls_http_done_fn done, void *arg);

/* A long-lived POST whose body is written piece by piece (chunked, see
 * ls_http_stream_write) and whose response body is handed to `data` as it
 * arrives; `done` when it ends for any reason. */
ls_http_request *ls_http_stream(ls_http *http, const char *url, const char *const *headers,
                                ls_http_data_fn data, ls_http_done_fn done, void *arg);

/* Appends to a stream's request body and sends it as soon as possible. */
void ls_http_stream_write(ls_http_request *req, const char *data, size_t len);

/* Stops a request: no callback for it after this returns. NULL is fine. */
void ls_http_cancel(ls_http_request *req);

/* ls_now() when req was sent. */
double ls_http_sent_at(const ls_http_request *req);

/* The value of response header `name` (case-insensitive), or NULL. */
const char *ls_http_header_get(const ls_http_response *res, const char *name);

/* TCP connections the client has open now (tests, metrics). */
unsigned ls_http_connections(const ls_http *http);

#endif
