/* chaos-relay: plain TCP forwarding for the chaos run's partitioned node.
 *
 *   chaos-relay LISTEN_ADDR:PORT=TARGET_ADDR:PORT [...]
 *
 * The node the chaos run can cut off lives in a network namespace of its
 * own, joined to this machine by a veth pair on link-local addresses. A
 * namespace has its own loopback, so the stores, which listen on 127.0.0.1
 * only, are out of its reach: this relay listens on the host end of the
 * veth and forwards each connection to the store's loopback port. Cutting
 * the veth (ip link set down) then cuts the node off exactly as a network
 * partition would: its packets vanish, nothing is refused or reset.
 *
 * One libevent loop, a bufferevent per side, backpressure by watermarks.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* A side stops reading while its peer has this much unsent. */
#define HIGH_WATER (256 * 1024)

typedef struct route {
    struct sockaddr_in listen, target;
} route;

typedef struct side side;
struct side {
    struct bufferevent *bev;
    side *peer;
    int closing; /* our peer is gone: close once our output is flushed */
};

static struct event_base *base;

static int parse_addr(const char *text, struct sockaddr_in *out)
{
    char host[64];
    const char *colon = strrchr(text, ':');
    if (!colon || (size_t)(colon - text) >= sizeof host)
        return -1;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons((unsigned short)port);
    if (*end || port <= 0 || port > 65535 || inet_pton(AF_INET, host, &out->sin_addr) != 1)
        return -1;
    return 0;
}

static void side_free(side *s)
{
    if (s->peer)
        s->peer->peer = NULL;
    bufferevent_free(s->bev);
    free(s);
}

static void on_flushed(struct bufferevent *bev, void *arg)
{
    side *s = arg;
    if (s->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        side_free(s);
}

/* One side ended: the other closes too, after sending what it still has
 * for its own end (a reply the store sent just before closing). */
static void side_end(side *s)
{
    side *peer = s->peer;
    side_free(s);
    if (!peer)
        return;
    if (evbuffer_get_length(bufferevent_get_output(peer->bev)) == 0) {
        side_free(peer);
        return;
    }
    peer->closing = 1;
    bufferevent_disable(peer->bev, EV_READ);
    bufferevent_setwatermark(peer->bev, EV_WRITE, 0, 0);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    side *s = arg;
    if (!s->peer) {
        evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
        return;
    }
    struct bufferevent *to = s->peer->bev;
    bufferevent_write_buffer(to, bufferevent_get_input(bev));
    if (evbuffer_get_length(bufferevent_get_output(to)) >= HIGH_WATER) {
        /* resumed by on_drained once the peer has sent half of it */
        bufferevent_disable(bev, EV_READ);
        bufferevent_setwatermark(to, EV_WRITE, HIGH_WATER / 2, 0);
    }
}

static void on_drained(struct bufferevent *bev, void *arg)
{
    side *s = arg;
    if (s->closing) {
        on_flushed(bev, arg);
        return;
    }
    if (s->peer) {
        bufferevent_enable(s->peer->bev, EV_READ);
        bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    if (what & BEV_EVENT_CONNECTED)
        return;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        side_end(arg);
}

static side *side_new(evutil_socket_t fd)
{
    side *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!s->bev) {
        free(s);
        return NULL;
    }
    bufferevent_setcb(s->bev, on_read, on_drained, on_event, s);
    return s;
}

static void on_accept(struct evconnlistener *listener, evutil_socket_t fd, struct sockaddr *addr,
                      int len, void *arg)
{
    const route *r = arg;
    side *in = side_new(fd), *out = side_new(-1);
    if (!in || !out) {
        if (in)
            side_free(in);
        else
            evutil_closesocket(fd);
        if (out)
            side_free(out);
        return;
    }
    in->peer = out;
    out->peer = in;
    /* a refused connect arrives as an error event and closes both */
    if (bufferevent_socket_connect(out->bev, (const struct sockaddr *)&r->target,
                                   sizeof r->target) < 0) {
        side_end(out);
        return;
    }
    bufferevent_enable(in->bev, EV_READ | EV_WRITE);
    bufferevent_enable(out->bev, EV_READ | EV_WRITE);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: chaos-relay LISTEN_ADDR:PORT=TARGET_ADDR:PORT [...]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    route *routes = calloc((size_t)argc, sizeof *routes);
    if (!base || !routes)
        return 1;
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "chaos-relay: '%s' is not LISTEN=TARGET\n", argv[i]);
            return 2;
        }
        *eq = '\0';
        if (parse_addr(argv[i], &routes[i].listen) < 0 ||
            parse_addr(eq + 1, &routes[i].target) < 0) {
            fprintf(stderr, "chaos-relay: bad address in '%s=%s'\n", argv[i], eq + 1);
            return 2;
        }
        struct evconnlistener *l = evconnlistener_new_bind(
            base, on_accept, &routes[i], LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 64,
            (const struct sockaddr *)&routes[i].listen, sizeof routes[i].listen);
        if (!l) {
            fprintf(stderr, "chaos-relay: cannot listen on %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
    }
    fprintf(stderr, "chaos-relay: %d route(s) up\n", argc - 1);
    event_base_dispatch(base);
    return 0;
}
