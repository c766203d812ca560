/* memory://name — elections inside one process, for tests and examples.
 * Stores opened with the same name share one "world" of keys. Every store
 * is a session with its own lease; the test hooks (inject) break renewals,
 * drop sessions and delete keys so specs can drive every engine path. */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

typedef struct mem_entry mem_entry;
typedef struct mem_key mem_key;

typedef struct mem_world {
    char *name;
    unsigned refs;
    mem_key *keys;
    struct mem_world *next;
} mem_world;

struct mem_key {
    char *name;
    uint64_t term;       /* last term handed out; only grows */
    mem_entry *queue;    /* candidates in arrival order; the first holds */
    mem_entry *watchers; /* followers */
    mem_key *next;
};

typedef struct mem_store {
    mem_world *world;
    double renew_delay; /* injected: acknowledgements arrive this late */
    bool renew_fail;    /* injected: renewals fail */
    int fail_next;      /* injected: this many campaign/follow calls fail */
} mem_store;

struct mem_entry {
    ls_election *election;
    mem_store *store;
    mem_key *key;
    bool holding;
    double lease_expiry;  /* world side: when the holding lapses */
    double ack_sent_at;   /* the renewal whose ack is delayed */
    struct event *renew;  /* every ls_renew_period() while holding */
    struct event *ack;    /* a delayed acknowledgement */
    struct event *expiry; /* the world's lease expiry */
    mem_entry *next;
};

static mem_world *all_worlds;

static mem_world *world_get(const char *name)
{
    for (mem_world *w = all_worlds; w; w = w->next) {
        if (!strcmp(w->name, name)) {
            w->refs++;
            return w;
        }
    }
    mem_world *w = calloc(1, sizeof *w);
    w->name = strdup(name);
    w->refs = 1;
    w->next = all_worlds;
    all_worlds = w;
    return w;
}

static void world_unref(mem_world *w)
{
    if (--w->refs > 0)
        return;
    for (mem_world **p = &all_worlds; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            break;
        }
    }
    while (w->keys) {
        mem_key *k = w->keys;
        w->keys = k->next;
        free(k->name);
        free(k);
    }
    free(w->name);
    free(w);
}

static mem_key *key_get(mem_world *w, const char *name)
{
    for (mem_key *k = w->keys; k; k = k->next)
        if (!strcmp(k->name, name))
            return k;
    mem_key *k = calloc(1, sizeof *k);
    k->name = strdup(name);
    k->next = w->keys;
    w->keys = k;
    return k;
}

static void list_remove(mem_entry **list, mem_entry *entry)
{
    for (mem_entry **p = list; *p; p = &(*p)->next) {
        if (*p == entry) {
            *p = entry->next;
            entry->next = NULL;
            return;
        }
    }
}

static void list_append(mem_entry **list, mem_entry *entry)
{
    mem_entry **p = list;
    while (*p)
        p = &(*p)->next;
    *p = entry;
}

static void arm(struct event *ev, double seconds)
{
    struct timeval tv = {(time_t)seconds, (suseconds_t)((seconds - (time_t)seconds) * 1e6)};
    evtimer_add(ev, &tv);
}

static void stop_holding(mem_entry *entry)
{
    entry->holding = false;
    evtimer_del(entry->renew);
    evtimer_del(entry->ack);
    evtimer_del(entry->expiry);
}

/* Hands the key to the first candidate if it has none, and tells every
 * participant who leads. Each call reports the state as it is now, so
 * re-entrant calls from the engine's hooks are harmless. */
static void key_settle(mem_key *k)
{
    mem_entry *holder = k->queue;
    if (holder && !holder->holding) {
        double now = ls_now();
        holder->holding = true;
        holder->lease_expiry = now + ls_election_view(holder->election)->ttl;
        k->term++;
        arm(holder->renew, ls_renew_period(ls_election_view(holder->election)));
        arm(holder->expiry, ls_election_view(holder->election)->ttl);
        ls_election_acquired(holder->election, k->term, now);
        if (k->queue != holder)
            return; /* the hook cancelled it; that call settled again */
    }
    struct ls_election_view *hv = holder ? ls_election_view(holder->election) : NULL;
    /* copy the lists: a report may cancel entries */
    mem_entry *targets[256];
    size_t n = 0;
    for (mem_entry *e = k->queue; e && n < 256; e = e->next)
        targets[n++] = e;
    for (mem_entry *e = k->watchers; e && n < 256; e = e->next)
        targets[n++] = e;
    uint64_t term = k->term;
    for (size_t i = 0; i < n; i++) {
        if (k->queue != holder)
            return;
        if (hv)
            ls_election_leader(targets[i]->election, hv->value, hv->value_len, term);
        else
            ls_election_leader(targets[i]->election, NULL, 0, 0);
    }
}

static void renew_cb(evutil_socket_t fd, short what, void *arg)
{
    mem_entry *entry = arg;
    ls_election *e = entry->election;
    double ttl = ls_election_view(e)->ttl;
    arm(entry->renew, ls_renew_period(ls_election_view(e)));
    if (entry->store->renew_fail) {
        ls_election_error(e, "memory store: renewal failed (injected fault)");
        return;
    }
    double now = ls_now();
    entry->lease_expiry = now + ttl;
    arm(entry->expiry, ttl);
    if (entry->store->renew_delay > 0) {
        if (!evtimer_pending(entry->ack, NULL)) {
            entry->ack_sent_at = now;
            arm(entry->ack, entry->store->renew_delay);
        }
        return;
    }
    ls_election_renewed(e, now);
}

static void ack_cb(evutil_socket_t fd, short what, void *arg)
{
    mem_entry *entry = arg;
    ls_election_renewed(entry->election, entry->ack_sent_at);
}

static void expiry_cb(evutil_socket_t fd, short what, void *arg)
{
    mem_entry *entry = arg;
    mem_key *k = entry->key;
    /* the world lets the lease lapse: the holder goes to the back */
    stop_holding(entry);
    list_remove(&k->queue, entry);
    list_append(&k->queue, entry);
    ls_election_lost(entry->election, "session");
    key_settle(k);
}

static int mem_open(ls_store *store, const ls_store_config *cfg, char *err, size_t errlen)
{
    static const char *const known[] = {NULL};
    if (ls_config_check(cfg, known, err, errlen) < 0)
        return -1;
    mem_store *ms = calloc(1, sizeof *ms);
    ms->world = world_get(cfg->path);
    store->impl = ms;
    return 0;
}

static mem_entry *entry_new(ls_store *store, ls_election *e)
{
    mem_entry *entry = calloc(1, sizeof *entry);
    entry->election = e;
    entry->store = store->impl;
    entry->key = key_get(entry->store->world, ls_election_view(e)->key);
    struct event_base *base = ls_loop_base();
    entry->renew = evtimer_new(base, renew_cb, entry);
    entry->ack = evtimer_new(base, ack_cb, entry);
    entry->expiry = evtimer_new(base, expiry_cb, entry);
    ls_election_view(e)->backend_data = entry;
    return entry;
}

static bool injected_failure(ls_store *store, ls_election *e)
{
    mem_store *ms = store->impl;
    if (ms->fail_next <= 0)
        return false;
    ms->fail_next--;
    ls_election_failed(e, "memory store: request failed (injected fault)");
    return true;
}

static void mem_campaign(ls_store *store, ls_election *e)
{
    if (injected_failure(store, e))
        return;
    mem_entry *entry = entry_new(store, e);
    list_append(&entry->key->queue, entry);
    key_settle(entry->key);
}

static void mem_follow(ls_store *store, ls_election *e)
{
    if (injected_failure(store, e))
        return;
    mem_entry *entry = entry_new(store, e);
    list_append(&entry->key->watchers, entry);
    key_settle(entry->key);
}

static void mem_cancel(ls_store *store, ls_election *e)
{
    mem_entry *entry = ls_election_view(e)->backend_data;
    if (!entry)
        return;
    ls_election_view(e)->backend_data = NULL;
    mem_key *k = entry->key;
    bool was_holder = entry->holding;
    stop_holding(entry);
    list_remove(&k->queue, entry);
    list_remove(&k->watchers, entry);
    event_free(entry->renew);
    event_free(entry->ack);
    event_free(entry->expiry);
    free(entry);
    if (was_holder)
        key_settle(k);
}

static void mem_close(ls_store *store)
{
    mem_store *ms = store->impl;
    world_unref(ms->world);
    free(ms);
}

/* Every entry of this store in the world, holding ones only if asked. */
static size_t store_entries(mem_store *ms, mem_entry **out, size_t max)
{
    size_t n = 0;
    for (mem_key *k = ms->world->keys; k; k = k->next)
        for (mem_entry *e = k->queue; e && n < max; e = e->next)
            if (e->store == ms)
                out[n++] = e;
    return n;
}

static int mem_inject(ls_store *store, const char *fault, const char *arg, double value, char *err,
                      size_t errlen)
{
    mem_store *ms = store->impl;
    if (!strcmp(fault, "renew_delay")) {
        ms->renew_delay = value;
    } else if (!strcmp(fault, "renew_fail")) {
        ms->renew_fail = value != 0;
    } else if (!strcmp(fault, "fail_next")) {
        ms->fail_next = (int)value;
    } else if (!strcmp(fault, "lose_session")) {
        /* the session ends: every holding of this store lapses at once */
        mem_entry *entries[1024];
        size_t n = store_entries(ms, entries, 1024);
        for (size_t i = 0; i < n; i++)
            if (entries[i]->holding)
                expiry_cb(-1, 0, entries[i]);
    } else if (!strcmp(fault, "delete_key")) {
        if (!arg) {
            snprintf(err, errlen, "fault 'delete_key' needs a key");
            return -1;
        }
        mem_key *k = key_get(ms->world, arg);
        mem_entry *holder = k->queue;
        if (holder && holder->holding) {
            stop_holding(holder);
            list_remove(&k->queue, holder);
            list_append(&k->queue, holder);
            ls_election_lost(holder->election, "deleted");
            key_settle(k);
        }
    } else {
        snprintf(err, errlen,
                 "unknown fault '%s' (known: renew_delay, renew_fail, fail_next, lose_session, "
                 "delete_key)",
                 fault);
        return -1;
    }
    return 0;
}

const ls_backend ls_backend_memory = {
    .scheme = "memory",
    .min_ttl = 0.01,
    .max_ttl = 86400,
    .open = mem_open,
    .campaign = mem_campaign,
    .follow = mem_follow,
    .cancel = mem_cancel,
    .close = mem_close,
    .inject = mem_inject,
};
