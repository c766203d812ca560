/* The election engine: candidate and follower state machines, the local
 * deadline, backoff scheduling and counters. It knows no store (it calls
 * the backend vtable) and no Lua (it calls ls_election_hooks). */
#ifndef LEADERSHIP_ENGINE_H
#define LEADERSHIP_ENGINE_H

#include "../backends/store.h"

typedef enum {
    LS_IDLE,        /* made, not run */
    LS_CAMPAIGNING, /* queued or trying to acquire */
    LS_LEADER,
    LS_FOLLOWING,
    LS_BACKOFF, /* waiting the retry delay after a failure */
    LS_STOPPED,
} ls_state;

/* How the engine reaches whoever owns the election (the Lua binding). */
typedef struct ls_election_hooks {
    void (*elected)(void *owner, uint64_t term);
    void (*lost)(void *owner, const char *reason);
    /* value NULL: vacant */
    void (*leader_change)(void *owner, const char *value, size_t len, uint64_t term);
    void (*error)(void *owner, const char *message);
    /* Seconds to wait before attempt `attempt` (1, 2, ...); < 0 gives up,
     * with why[] saying why if not by plain choice (the policy failed). */
    double (*retry_delay)(void *owner, int attempt, const char *message, char *why, size_t whylen);
    /* Stopped for good (stop, or gave up): no more hooks after this. */
    void (*stopped)(void *owner);
    /* Optional (may be NULL): a renewal moved the local deadline to
     * `deadline` (monotonic), e.g. to tell a watchdog process. */
    void (*renewed)(void *owner, double deadline);
} ls_election_hooks;

typedef struct ls_election_counters {
    uint64_t elected, lost, errors, renewals;
    double last_renewal_latency;  /* seconds from send to acknowledgement */
    uint64_t latency_buckets[12]; /* renewal latency histogram, see engine.c */
    double latency_sum;
    /* Monotonic times of the last store answer that worked (acquired,
     * renewed, leader report) and of the last store error; 0 if none.
     * last_error > last_ok: the store is failing now (for /healthz). */
    double last_ok, last_error;
} ls_election_counters;

/* Latency histogram bucket upper bounds (seconds); the last is +Inf. */
extern const double ls_latency_bounds[12];

/* A candidate (value != NULL) or a follower (value == NULL) of `key`.
 * renew_deadline <= 0 means 2/3 of ttl. Takes a reference on store. */
ls_election *ls_election_new(ls_store *store, const char *key, const char *value, size_t len,
                             double ttl, double renew_deadline, const ls_election_hooks *hooks,
                             void *owner);

/* Starts campaigning or following. Holds the loop until stopped. */
void ls_election_run(ls_election *e);

/* Leader: step down (on_lost "resign") and campaign again. */
void ls_election_resign(ls_election *e);

/* Leaves the election, releasing leadership at once. Idempotent. */
void ls_election_stop(ls_election *e);

/* Leader, and its local deadline has not passed (stepping down if it has). */
bool ls_election_is_leader(ls_election *e);

/* The fencing token while leader, else 0. */
uint64_t ls_election_term(ls_election *e);

/* The last leader reported: value (NULL if vacant or unknown) and term. */
const char *ls_election_leader_value(ls_election *e, size_t *len, uint64_t *term);

ls_state ls_election_state(ls_election *e);
const char *ls_state_name(ls_state state);
const ls_election_counters *ls_election_counters_of(ls_election *e);
double ls_election_deadline(ls_election *e); /* monotonic; 0 unless leader */
const char *ls_election_key(ls_election *e);

/* Frees a stopped (or never run) election; no hooks are called. */
void ls_election_free(ls_election *e);

/* Opens a store for cfg (taken over, freed on failure) with its backend
 * by scheme. One reference, owned by the caller. NULL with a message. */
ls_store *ls_store_open(ls_store_config *cfg, char *err, size_t errlen);
void ls_store_ref(ls_store *store);
/* Drops a reference; the last one closes the backend. */
void ls_store_unref(ls_store *store);

/* Live engine objects, for the specs' leak checks. */
unsigned ls_election_live_count(void);
unsigned ls_store_live_count(void);

#endif
