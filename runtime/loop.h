/* The process's one libevent loop and its monotonic clock. */
#ifndef LEADERSHIP_LOOP_H
#define LEADERSHIP_LOOP_H

#include <stdbool.h>

struct event_base;
struct evdns_base;
struct timeval;

/* The loop, created on first use. */
struct event_base *ls_loop_base(void);

/* The loop's resolver, created on first use: name servers from
 * /etc/resolv.conf as it was then (see backends/store.h). */
struct evdns_base *ls_loop_dns(void);

/* For evtimer_add: run as soon as possible, after everything made ready
 * this way before (first in, first out). */
const struct timeval *ls_loop_ready_timeout(void);

/* Frees the loop once nothing uses it any more (the module unloading). */
void ls_loop_free(void);

/* Monotonic seconds; wall-clock seconds since the epoch. */
double ls_now(void);
double ls_wall(void);

/* Work that keeps ls_loop_run going: active elections, running handlers,
 * backend clean-ups. */
void ls_loop_hold(void);
void ls_loop_release(void);
unsigned ls_loop_holds(void);

/* The longest wait given to a timer or to ls_loop_run: some three years,
 * "until stopped" in practice. A timeval cannot hold math.huge. */
#define LS_LOOP_MAX_WAIT 1e8

/* Runs the loop for `timeout` seconds (< 0: no limit), or until
 * ls_loop_break, or, with until_idle, until nothing holds it. True if
 * nothing holds it when it returns. */
bool ls_loop_run(double timeout, bool until_idle);

/* Makes the innermost ls_loop_run return after the current callback. */
void ls_loop_break(void);

/* How many ls_loop_run calls are on the stack (0: not inside the loop). */
int ls_loop_depth(void);

#endif
