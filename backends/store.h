/* The one interface between the election engine and a store.
 *
 * A backend is a vtable (ls_backend) filled in one place in its own file;
 * nothing else of it is exported. It never calls Lua. It talks back to the
 * engine only through the ls_election_* and ls_store_* report functions
 * declared at the end of this header, always from the loop thread.
 */
#ifndef LEADERSHIP_STORE_H
#define LEADERSHIP_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ls_store ls_store;
typedef struct ls_election ls_election;

/* One option from the URL query or the Lua options table, flattened:
 * { tls = { ca = "x" } } arrives as "tls.ca" = "x". Values are strings. */
typedef struct ls_option {
    char *name;
    char *value;
} ls_option;

/* A parsed store URL plus its options. */
typedef struct ls_store_config {
    char *scheme;   /* "etcd", "zk", "consul", "redis", "file", "memory" */
    char *userinfo; /* "user:pass" before '@', or NULL; never logged */
    char **hosts;   /* "host:port" each, in the order given */
    size_t nhosts;
    char *path;     /* file:///dir -> "/dir"; memory://name -> "name" */
    char *redacted; /* the URL with any password replaced, for messages */
    ls_option *options;
    size_t noptions;
    double timeout; /* seconds for one store request (option "timeout") */
} ls_store_config;

/* The value of option `name`, or NULL. */
const char *ls_config_get(const ls_store_config *cfg, const char *name);

/* Fails with "unknown option 'x' for etcd (did you mean 'y'?)" unless every
 * option is in `known` (NULL-terminated). "timeout" is always known. */
int ls_config_check(const ls_store_config *cfg, const char *const *known, char *err, size_t errlen);

/* Parses option `name` as seconds ("5", "0.5", "250ms", "5s", "1m");
 * `*out` keeps its default when absent. -1 with err on garbage. */
int ls_config_seconds(const ls_store_config *cfg, const char *name, double *out, char *err,
                      size_t errlen);

typedef struct ls_backend {
    const char *scheme;
    double min_ttl, max_ttl; /* seconds; the engine rejects ttls outside */

    /* Opens a store from cfg: validates, sets store->impl. Connecting may
     * happen later, on the loop. 0, or -1 with a message naming the problem. */
    int (*open)(ls_store *store, const ls_store_config *cfg, char *err, size_t errlen);

    /* Starts running e for e->key: acquire, or queue and wait. Reports
     * ls_election_leader for every change it sees (others or vacancy) and
     * ls_election_acquired once it holds the key, then ls_election_renewed
     * for each acknowledged renewal. Called again after cancel (resign). */
    void (*campaign)(ls_store *store, ls_election *e);

    /* Starts following e->key: ls_election_leader on each change, vacancy
     * included. After a gap it re-reads, never repeating a stale leader. */
    void (*follow)(ls_store *store, ls_election *e);

    /* Ends whatever e is doing and releases what it holds (deletes its key,
     * so a planned stop hands over at once). No report for e after this
     * returns; finishing the release later is the backend's job (hold the
     * loop with ls_loop_hold meanwhile). campaign may follow at once. */
    void (*cancel)(ls_store *store, ls_election *e);

    /* The store object is gone and no election uses it: end the session
     * or lease and free store->impl, possibly after the loop has sent a
     * last request. */
    void (*close)(ls_store *store);

    /* Test hooks (memory, zk): apply a fault by name; NULL where none. */
    int (*inject)(ls_store *store, const char *fault, const char *arg, double value, char *err,
                  size_t errlen);
} ls_backend;

struct ls_store {
    const ls_backend *backend;
    void *impl;             /* the backend's */
    ls_store_config config; /* owned by the store */
    unsigned refs;          /* Lua object + elections using it */
};

/* What the engine tells a backend about an election. Backends read these
 * fields and own backend_data; the rest of the struct is the engine's. */
struct ls_election_view {
    ls_store *store;
    const char *key;
    const char *value; /* candidates: the value to store; followers: NULL */
    size_t value_len;
    double ttl; /* seconds */
    /* seconds a holding stays valid from its valid_from (below 'ttl'):
     * a backend whose lease runs shorter than ttl must shift valid_from */
    double renew_deadline;
    bool candidate;
    uint64_t serial; /* this election object's number: never reused in a process */
    void *backend_data;
};

/* How often a backend renews the holding of the election v describes: a
 * third of the ttl, or half its renew_deadline if that is shorter, so that
 * two renewals fall within every deadline, whatever it is. */
static inline double ls_renew_period(const struct ls_election_view *v)
{
    return v->renew_deadline / 2 < v->ttl / 3 ? v->renew_deadline / 2 : v->ttl / 3;
}

/* ---- reports from a backend to the engine (loop thread only) ---- */

/* e now holds the key with fencing token `term` (only grows per key). The
 * holding is known valid from monotonic time `valid_from` (the send time
 * of the request that proved it) for renew_deadline seconds. */
void ls_election_acquired(ls_election *e, uint64_t term, double valid_from);

/* A renewal sent at monotonic time `valid_from` was acknowledged. */
void ls_election_renewed(ls_election *e, double valid_from);

/* e no longer holds the key: "session" (lease/session gone), "deleted"
 * (key removed or taken behind our back). The backend keeps campaigning. */
void ls_election_lost(ls_election *e, const char *reason);

/* The current leader of e's key: value (len bytes) and term, or value NULL
 * for vacancy. Repeats are fine; the engine reports only changes. */
void ls_election_leader(ls_election *e, const char *value, size_t len, uint64_t term);

/* A store error the backend is recovering from by itself (renewal retry,
 * reconnect): reported to on_error, nothing else changes. */
void ls_election_error(ls_election *e, const char *message);

/* The attempt is over: the backend holds nothing for e and does nothing
 * more for it. The engine reports the error, waits the retry delay, and
 * calls campaign/follow again (or gives up). A leader loses ("session"). */
void ls_election_failed(ls_election *e, const char *message);

/* The backend's view of an election, and its per-election slot. */
struct ls_election_view *ls_election_view(ls_election *e);

/* Monotonic seconds since an arbitrary start, as used for valid_from. */
double ls_now(void);

/* Keeps leadership.run() from returning while a backend finishes work that
 * outlives its elections (a lease revoke in flight). Balanced calls. */
void ls_loop_hold(void);
void ls_loop_release(void);

/* The loop every backend registers its events with. */
struct event_base *ls_loop_base(void);

/* The loop's resolver (libevent's evdns), for names a library would look
 * up with a blocking getaddrinfo: name servers from /etc/resolv.conf as it
 * was at first use. */
struct evdns_base *ls_loop_dns(void);

#endif
