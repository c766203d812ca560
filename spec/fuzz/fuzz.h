/* Shared by the libFuzzer targets in spec/fuzz: reading the input as a
 * stream of choices and chunks, quiet logs, running the loop dry. */
#ifndef LEADERSHIP_FUZZ_H
#define LEADERSHIP_FUZZ_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../runtime/log.h"
#include "../../runtime/loop.h"

/* A property of the code under test failed: abort, so libFuzzer keeps the
 * input as a crash. */
#define FUZZ_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #cond);            \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* The input, consumed front to back; reads past the end give zeros. */
typedef struct fuzz_in {
    const uint8_t *p;
    size_t n;
} fuzz_in;

static inline unsigned fuzz_byte(fuzz_in *in)
{
    if (in->n == 0)
        return 0;
    in->n--;
    return *in->p++;
}

static inline bool fuzz_done(const fuzz_in *in) { return in->n == 0; }

static inline uint64_t fuzz_u64(fuzz_in *in, unsigned bytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++)
        v = v << 8 | fuzz_byte(in);
    return v;
}

/* A chunk: one length byte (0-254; 255: the next two bytes give it), then
 * that many bytes, or what is left. Points into the input; *len set. */
static inline const char *fuzz_chunk(fuzz_in *in, size_t *len)
{
    size_t want = fuzz_byte(in);
    if (want == 255)
        want = (size_t)fuzz_u64(in, 2);
    if (want > in->n)
        want = in->n;
    const char *p = (const char *)in->p;
    in->p += want;
    in->n -= want;
    *len = want;
    return p;
}

/* The same, as a new NUL-terminated string (free it). */
static inline char *fuzz_string(fuzz_in *in)
{
    size_t len;
    const char *p = fuzz_chunk(in, &len);
    char *s = malloc(len + 1);
    memcpy(s, p, len);
    s[len] = '\0';
    return s;
}

/* All of data as a NUL-terminated string (free it). */
static inline char *fuzz_cstring(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* Logs only errors: a fuzzer runs millions of inputs. */
static inline void fuzz_quiet(void)
{
    static bool done;
    if (!done) {
        ls_log_set_level(getenv("FUZZ_LOG") ? "debug" : "error");
        done = true;
    }
}

/* Runs what the loop has ready (zero-delay timers, active events), a
 * bounded number of rounds: no waiting for real time to pass. */
static inline void fuzz_drain_loop(void)
{
    struct event_base *base = ls_loop_base();
    for (int i = 0; i < 8; i++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        if (event_base_get_num_events(base, EVENT_BASE_COUNT_ACTIVE) == 0)
            break;
    }
}

/* As if time jumped past every pending timer: each one-shot timer is
 * taken off the clock and run once, in the order they were due. */
typedef struct fuzz_timer {
    struct event *ev;
    struct timeval due;
} fuzz_timer;

typedef struct fuzz_timers {
    fuzz_timer list[256];
    size_t n;
} fuzz_timers;

static inline int fuzz_collect_timer(const struct event_base *base, const struct event *ev,
                                     void *arg)
{
    fuzz_timers *t = arg;
    short what = event_get_events(ev);
    struct timeval due;
    if (t->n < 256 && !(what & (EV_READ | EV_WRITE | EV_SIGNAL)) &&
        event_pending(ev, EV_TIMEOUT, &due)) {
        t->list[t->n].ev = (struct event *)ev;
        t->list[t->n].due = due;
        t->n++;
    }
    return 0;
}

static inline int fuzz_timer_cmp(const void *a, const void *b)
{
    const struct timeval *x = &((const fuzz_timer *)a)->due, *y = &((const fuzz_timer *)b)->due;
    if (x->tv_sec != y->tv_sec)
        return x->tv_sec < y->tv_sec ? -1 : 1;
    return x->tv_usec < y->tv_usec ? -1 : x->tv_usec > y->tv_usec;
}

/* Returns how many timers it ran. */
static inline size_t fuzz_fire_timers(void)
{
    static fuzz_timers t;
    t.n = 0;
    event_base_foreach_event(ls_loop_base(), fuzz_collect_timer, &t);
    qsort(t.list, t.n, sizeof t.list[0], fuzz_timer_cmp);
    for (size_t i = 0; i < t.n; i++) {
        if (!(event_get_events(t.list[i].ev) & EV_PERSIST))
            event_del(t.list[i].ev);
        event_active(t.list[i].ev, EV_TIMEOUT, 1);
    }
    fuzz_drain_loop();
    return t.n;
}

#endif
