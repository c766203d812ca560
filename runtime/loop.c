#include "loop.h"

#include <event2/dns.h>
#include <event2/event.h>
#include <time.h>

static struct event_base *loop_base;
static struct evdns_base *loop_dns;
/* A zero timeout whose events run in the order they were added (libevent
 * keeps a queue per common timeout; equal times in its heap come out in any
 * order). */
static const struct timeval *loop_ready;
static unsigned loop_hold_count;
static int loop_depth;
static bool loop_break_requested;

struct event_base *ls_loop_base(void)
{
    if (!loop_base) {
        struct event_config *cfg = event_config_new();
        /* Timers must follow the monotonic clock, so a wall-clock jump
         * cannot stretch or shrink a deadline. */
        event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
        /* ... and count from the moment they are armed, not from when the
         * loop last woke: armed late in a long callback, a deadline timer
         * would fire early by the callback's length. */
        event_config_set_flag(cfg, EVENT_BASE_FLAG_NO_CACHE_TIME);
        loop_base = event_base_new_with_config(cfg);
        event_config_free(cfg);
        struct timeval zero = {0, 0};
        loop_ready = event_base_init_common_timeout(loop_base, &zero);
    }
    return loop_base;
}

const struct timeval *ls_loop_ready_timeout(void)
{
    ls_loop_base();
    return loop_ready;
}

double ls_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double ls_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct evdns_base *ls_loop_dns(void)
{
    if (!loop_dns) {
        loop_dns = evdns_base_new(ls_loop_base(), EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        /* not by evdns_base_new's flag, which gives no resolver at all for a
         * missing resolv.conf: this leaves the defaults (127.0.0.1), as glibc */
        evdns_base_resolv_conf_parse(loop_dns, DNS_OPTIONS_ALL, "/etc/resolv.conf");
    }
    return loop_dns;
}

void ls_loop_free(void)
{
    if (loop_dns) {
        /* a lookup cancelled just before (a store closed on the way out)
         * is freed by a callback the loop will not run: evdns leaks it */
        evdns_base_free(loop_dns, 0);
        loop_dns = NULL;
    }
    if (loop_base) {
        event_base_free(loop_base);
        loop_base = NULL;
        loop_ready = NULL;
    }
}

void ls_loop_hold(void) { loop_hold_count++; }

void ls_loop_release(void)
{
    if (loop_hold_count > 0)
        loop_hold_count--;
}

unsigned ls_loop_holds(void) { return loop_hold_count; }

int ls_loop_depth(void) { return loop_depth; }

void ls_loop_break(void)
{
    loop_break_requested = true;
    event_base_loopbreak(ls_loop_base());
}

static void loop_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    *(bool *)arg = true;
}

bool ls_loop_run(double timeout, bool until_idle)
{
    struct event_base *base = ls_loop_base();
    bool timed_out = false;
    struct event *timer = NULL;
    if (timeout >= 0) {
        timer = evtimer_new(base, loop_timeout_cb, &timed_out);
        struct timeval tv = {(time_t)timeout, (suseconds_t)((timeout - (time_t)timeout) * 1e6)};
        evtimer_add(timer, &tv);
    }
    loop_depth++;
    loop_break_requested = false;
    while (!timed_out && !loop_break_requested) {
        if (loop_hold_count == 0 && (until_idle || !timer))
            break;
        if (event_base_loop(base, EVLOOP_ONCE) == 1)
            break; /* no events at all: nothing could ever wake us */
    }
    loop_break_requested = false;
    loop_depth--;
    if (timer)
        event_free(timer);
    return loop_hold_count == 0;
}
