/* What the scripted fuzz targets share: engine hooks that check what they
 * are handed, and reading the input as lines of "<op><fields>". */
#ifndef LEADERSHIP_FUZZ_SCRIPT_H
#define LEADERSHIP_FUZZ_SCRIPT_H

#include "../../runtime/config.h"
#include "../../runtime/engine.h"
#include "fuzz.h"

static inline void hook_elected(void *owner, uint64_t term) {}
static inline void hook_lost(void *owner, const char *reason) { FUZZ_ASSERT(reason != NULL); }
static volatile unsigned fuzz_sink;

static inline void hook_leader(void *owner, const char *value, size_t len, uint64_t term)
{
    /* every byte of a leader's value is read: AddressSanitizer checks it is
     * all there */
    for (size_t i = 0; value && i < len; i++)
        fuzz_sink += (unsigned char)value[i];
}
static inline void hook_error(void *owner, const char *message) { FUZZ_ASSERT(message != NULL); }
static inline double hook_retry(void *owner, int attempt, const char *message, char *why,
                                size_t whylen)
{
    return 0;
}
static inline void hook_stopped(void *owner) {}

static const ls_election_hooks fuzz_hooks = {
    .elected = hook_elected,
    .lost = hook_lost,
    .leader_change = hook_leader,
    .error = hook_error,
    .retry_delay = hook_retry,
    .stopped = hook_stopped,
};

/* The rest of the line at *p (without its '\n'); *p moves past it. */
static inline const char *next_line(const char **p, const char *end, size_t *len)
{
    const char *start = *p;
    const char *nl = memchr(start, '\n', (size_t)(end - start));
    const char *stop = nl ? nl : end;
    *len = (size_t)(stop - start);
    *p = nl ? nl + 1 : end;
    return start;
}

static inline long field(const char **p, const char *end)
{
    long v = 0;
    bool neg = *p < end && **p == '-';
    if (neg)
        (*p)++;
    while (*p < end && **p >= '0' && **p <= '9' && v < 100000000)
        v = v * 10 + (*(*p)++ - '0');
    if (*p < end && **p == ',')
        (*p)++;
    return neg ? -v : v;
}

static inline ls_election *candidate(ls_store *store, const char *value, double ttl)
{
    ls_election *e =
        ls_election_new(store, "svc/leader", value, strlen(value), ttl, 0, &fuzz_hooks, NULL);
    ls_election_run(e);
    return e;
}

/* A follower of the same key. */
static inline ls_election *follower(ls_store *store, double ttl)
{
    ls_election *e = ls_election_new(store, "svc/leader", NULL, 0, ttl, 0, &fuzz_hooks, NULL);
    ls_election_run(e);
    return e;
}

/* Stops and frees e (NULL is fine). */
static inline void finish(ls_election **e)
{
    if (*e) {
        ls_election_stop(*e);
        ls_election_free(*e);
        *e = NULL;
    }
}

#endif
