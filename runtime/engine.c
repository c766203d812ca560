#include "engine.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "../backends/registry.h"
#include "config.h"
#include "log.h"
#include "loop.h"

const double ls_latency_bounds[12] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1,   0.25,   0.5,   1,    2.5,   1e300};

struct ls_election {
    struct ls_election_view view; /* what the backend sees; first member */
    char *key_copy;
    char *value_copy;
    ls_state state;
    uint64_t term;
    double deadline;     /* monotonic; meaningful while LEADER */
    struct event *timer; /* the deadline while leader, the retry delay in BACKOFF */
    int attempt;         /* failures since the last success */
    bool holding_loop;
    /* the last leader reported to the owner, for change detection */
    bool leader_known;
    char *leader_value;
    size_t leader_len;
    uint64_t leader_term;
    ls_election_counters counters;
    const ls_election_hooks *hooks;
    void *owner;
};

static unsigned live_elections;
static unsigned live_stores;

/* ---- stores ---- */

ls_store *ls_store_open(ls_store_config *cfg, char *err, size_t errlen)
{
    const ls_backend *backend = ls_backend_find(cfg->scheme);
    if (!backend) {
        const char *hint = ls_closest_word(cfg->scheme, ls_backend_schemes);
        char known[200] = "";
        for (const char *const *s = ls_backend_schemes; *s; s++) {
            strncat(known, *s, sizeof known - strlen(known) - 3);
            if (s[1])
                strcat(known, ", ");
        }
        snprintf(err, errlen, "unknown store backend '%s' in '%s'%s%s%s (known: %s)", cfg->scheme,
                 cfg->redacted, hint ? " (did you mean '" : "", hint ? hint : "", hint ? "'?)" : "",
                 known);
        ls_config_free(cfg);
        return NULL;
    }
    ls_store *store = calloc(1, sizeof *store);
    store->backend = backend;
    store->config = *cfg;
    store->refs = 1;
    if (backend->open(store, &store->config, err, errlen) < 0) {
        ls_config_free(&store->config);
        free(store);
        return NULL;
    }
    live_stores++;
    return store;
}

void ls_store_ref(ls_store *store) { store->refs++; }

void ls_store_unref(ls_store *store)
{
    if (--store->refs > 0)
        return;
    /* close frees impl, maybe after a last request; the config and the
     * store shell are ours. */
    store->backend->close(store);
    ls_config_free(&store->config);
    free(store);
    live_stores--;
}

unsigned ls_store_live_count(void) { return live_stores; }

/* ---- elections ---- */

struct ls_election_view *ls_election_view(ls_election *e) { return &e->view; }

const char *ls_state_name(ls_state state)
{
    static const char *const names[] = {"idle",      "campaigning", "leader",
                                        "following", "backoff",     "stopped"};
    return names[state];
}

static void election_timer_cb(evutil_socket_t fd, short what, void *arg);

ls_election *ls_election_new(ls_store *store, const char *key, const char *value, size_t len,
                             double ttl, double renew_deadline, const ls_election_hooks *hooks,
                             void *owner)
{
    ls_election *e = calloc(1, sizeof *e);
    e->key_copy = strdup(key);
    e->view.store = store;
    e->view.key = e->key_copy;
    e->view.ttl = ttl;
    e->view.candidate = value != NULL;
    static uint64_t elections_made;
    e->view.serial = ++elections_made;
    if (value) {
        e->value_copy = malloc(len + 1);
        memcpy(e->value_copy, value, len);
        e->value_copy[len] = '\0';
        e->view.value = e->value_copy;
        e->view.value_len = len;
    }
    e->view.renew_deadline = renew_deadline > 0 ? renew_deadline : ttl * 2 / 3;
    e->hooks = hooks;
    e->owner = owner;
    e->timer = evtimer_new(ls_loop_base(), election_timer_cb, e);
    ls_store_ref(store);
    live_elections++;
    return e;
}

static void arm_timer(ls_election *e, double seconds)
{
    if (seconds < 0)
        seconds = 0;
    struct timeval tv = {(time_t)seconds, (suseconds_t)((seconds - (time_t)seconds) * 1e6)};
    evtimer_add(e->timer, &tv);
}

/* Reports the leader to the owner if it differs from the last report. */
static void report_leader(ls_election *e, const char *value, size_t len, uint64_t term)
{
    if (e->leader_known) {
        bool same_vacancy = !value && !e->leader_value;
        bool same_leader = value && e->leader_value && len == e->leader_len &&
                           term == e->leader_term && !memcmp(value, e->leader_value, len);
        if (same_vacancy || same_leader)
            return;
    }
    free(e->leader_value);
    e->leader_value = NULL;
    if (value) {
        e->leader_value = malloc(len + 1);
        memcpy(e->leader_value, value, len);
        e->leader_value[len] = '\0';
    }
    e->leader_len = len;
    e->leader_term = value ? term : 0;
    e->leader_known = true;
    e->hooks->leader_change(e->owner, value, len, e->leader_term);
}

static void start_backend(ls_election *e)
{
    if (e->view.candidate) {
        e->state = LS_CAMPAIGNING;
        e->view.store->backend->campaign(e->view.store, e);
    } else {
        e->state = LS_FOLLOWING;
        e->view.store->backend->follow(e->view.store, e);
    }
}

/* A leader is one no longer: moves to `next` and tells the owner why. */
static void leave_leadership(ls_election *e, ls_state next, const char *reason)
{
    evtimer_del(e->timer);
    e->term = 0;
    e->deadline = 0;
    e->counters.lost++;
    e->state = next;
    ls_log_event(LS_INFO, "lost", "key", e->view.key, "reason", reason, NULL);
    e->hooks->lost(e->owner, reason);
}

/* Leaves leadership for `reason`; the backend's activity is ended. */
static void step_down(ls_election *e, const char *reason)
{
    /* the owner hears of the loss before the store can hand the key on */
    leave_leadership(e, LS_IDLE, reason);
    e->view.store->backend->cancel(e->view.store, e);
}

/* Waits the retry delay for `message`, or gives up. */
static void back_off(ls_election *e, const char *message)
{
    e->attempt++;
    char why[400] = "";
    double delay = e->hooks->retry_delay(e->owner, e->attempt, message, why, sizeof why);
    if (e->state != LS_IDLE)
        return; /* the retry function stopped us, or ran us again */
    if (delay < 0) {
        char final[1100];
        snprintf(final, sizeof final, "gave up after %d attempt%s: %s%s%s%s", e->attempt,
                 e->attempt == 1 ? "" : "s", message, why[0] ? " (" : "", why, why[0] ? ")" : "");
        /* "why" only when the policy failed: an empty one ends the fields */
        ls_log_event(LS_ERROR, "gave up", "key", e->view.key, "error", message,
                     why[0] ? "why" : NULL, why, NULL);
        e->hooks->error(e->owner, final);
        if (e->state != LS_STOPPED) {
            e->state = LS_STOPPED;
            if (e->holding_loop) {
                e->holding_loop = false;
                ls_loop_release();
            }
            e->hooks->stopped(e->owner);
        }
        return;
    }
    e->state = LS_BACKOFF;
    arm_timer(e, delay);
}

/* The local deadline: true (after stepping down) if it has passed. */
static bool deadline_passed(ls_election *e)
{
    if (e->state != LS_LEADER || ls_now() < e->deadline)
        return false;
    ls_log_event(LS_WARN, "deadline passed", "key", e->view.key, NULL);
    step_down(e, "deadline");
    if (e->state == LS_IDLE)
        back_off(e, "leadership lost: local deadline passed without an acknowledged renewal");
    return true;
}

static void election_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    ls_election *e = arg;
    if (e->state == LS_LEADER) {
        /* libevent's clock is not ours to the nanosecond: early, wait on */
        if (!deadline_passed(e))
            arm_timer(e, e->deadline - ls_now());
    } else if (e->state == LS_BACKOFF)
        start_backend(e);
}

void ls_election_run(ls_election *e)
{
    if (e->state != LS_IDLE && e->state != LS_STOPPED)
        return;
    if (!e->holding_loop) {
        e->holding_loop = true;
        ls_loop_hold();
    }
    e->attempt = 0;
    start_backend(e);
}

void ls_election_resign(ls_election *e)
{
    if (e->state == LS_LEADER) {
        step_down(e, "resign");
        if (e->state == LS_IDLE)
            start_backend(e);
    } else if (e->state == LS_CAMPAIGNING) {
        /* not leading: go to the back of the queue */
        e->view.store->backend->cancel(e->view.store, e);
        start_backend(e);
    }
}

void ls_election_stop(ls_election *e)
{
    if (e->state == LS_STOPPED || e->state == LS_IDLE) {
        e->state = LS_STOPPED;
        goto released;
    }
    bool backend_active = e->state != LS_BACKOFF;
    if (e->state == LS_LEADER) {
        leave_leadership(e, LS_STOPPED, "stop");
    } else {
        evtimer_del(e->timer);
        e->state = LS_STOPPED;
    }
    if (backend_active)
        e->view.store->backend->cancel(e->view.store, e);
released:
    if (e->holding_loop) {
        e->holding_loop = false;
        ls_loop_release();
        e->hooks->stopped(e->owner);
    }
}

bool ls_election_is_leader(ls_election *e) { return e->state == LS_LEADER && !deadline_passed(e); }

uint64_t ls_election_term(ls_election *e) { return ls_election_is_leader(e) ? e->term : 0; }

const char *ls_election_leader_value(ls_election *e, size_t *len, uint64_t *term)
{
    *len = e->leader_len;
    *term = e->leader_term;
    return e->leader_value;
}

ls_state ls_election_state(ls_election *e) { return e->state; }
const ls_election_counters *ls_election_counters_of(ls_election *e) { return &e->counters; }
double ls_election_deadline(ls_election *e) { return e->state == LS_LEADER ? e->deadline : 0; }
const char *ls_election_key(ls_election *e) { return e->view.key; }
unsigned ls_election_live_count(void) { return live_elections; }

void ls_election_free(ls_election *e)
{
    if (e->state != LS_STOPPED && e->state != LS_IDLE)
        e->view.store->backend->cancel(e->view.store, e);
    if (e->holding_loop)
        ls_loop_release();
    event_free(e->timer);
    ls_store_unref(e->view.store);
    free(e->key_copy);
    free(e->value_copy);
    free(e->leader_value);
    free(e);
    live_elections--;
}

/* ---- reports from backends ---- */

static void record_renewal(ls_election *e, double valid_from)
{
    double latency = ls_now() - valid_from;
    ls_election_counters *c = &e->counters;
    c->renewals++;
    c->last_renewal_latency = latency;
    c->latency_sum += latency;
    for (int i = 0; i < 12; i++) {
        if (latency <= ls_latency_bounds[i]) {
            c->latency_buckets[i]++;
            break;
        }
    }
}

void ls_election_acquired(ls_election *e, uint64_t term, double valid_from)
{
    if (e->state != LS_CAMPAIGNING)
        return;
    double deadline = valid_from + e->view.renew_deadline;
    if (ls_now() >= deadline) {
        /* proven too late to act on: a pause between send and now */
        ls_log_event(LS_WARN, "acquired past deadline", "key", e->view.key, NULL);
        e->view.store->backend->cancel(e->view.store, e);
        e->state = LS_IDLE;
        back_off(e, "acquired leadership only after its deadline had passed");
        return;
    }
    e->state = LS_LEADER;
    e->term = term;
    e->deadline = deadline;
    e->attempt = 0;
    e->counters.elected++;
    e->counters.last_ok = ls_now();
    arm_timer(e, deadline - ls_now());
    char term_text[24];
    snprintf(term_text, sizeof term_text, "%llu", (unsigned long long)term);
    ls_log_event(LS_INFO, "elected", "key", e->view.key, "term", term_text, NULL);
    e->hooks->elected(e->owner, term);
    if (e->state == LS_LEADER)
        report_leader(e, e->view.value, e->view.value_len, term);
}

void ls_election_renewed(ls_election *e, double valid_from)
{
    if (e->state != LS_LEADER || deadline_passed(e))
        return;
    record_renewal(e, valid_from);
    e->counters.last_ok = ls_now();
    double deadline = valid_from + e->view.renew_deadline;
    if (deadline > e->deadline) {
        e->deadline = deadline;
        arm_timer(e, deadline - ls_now());
        if (e->hooks->renewed)
            e->hooks->renewed(e->owner, deadline);
    }
}

void ls_election_lost(ls_election *e, const char *reason)
{
    /* a leader resumed after a pause lost to its own deadline first */
    if (e->state != LS_LEADER || deadline_passed(e))
        return;
    /* the backend keeps campaigning: only our view changes */
    leave_leadership(e, LS_CAMPAIGNING, reason);
}

void ls_election_leader(ls_election *e, const char *value, size_t len, uint64_t term)
{
    if (e->state != LS_CAMPAIGNING && e->state != LS_FOLLOWING && e->state != LS_LEADER)
        return;
    if (deadline_passed(e))
        return;
    e->counters.last_ok = ls_now();
    e->attempt = 0; /* the store answers: failures count from here */
    if (e->state == LS_LEADER && value && term != e->term) {
        /* the store names another leader: ours is gone */
        ls_election_lost(e, "deleted");
        if (e->state != LS_CAMPAIGNING)
            return;
    }
    report_leader(e, value, len, term);
}

void ls_election_error(ls_election *e, const char *message)
{
    if (e->state == LS_STOPPED || e->state == LS_IDLE)
        return;
    e->counters.errors++;
    e->counters.last_error = ls_now();
    ls_log_event(LS_WARN, "store error", "key", e->view.key, "error", message, NULL);
    e->hooks->error(e->owner, message);
}

void ls_election_failed(ls_election *e, const char *message)
{
    if (e->state != LS_CAMPAIGNING && e->state != LS_FOLLOWING && e->state != LS_LEADER)
        return;
    e->counters.errors++;
    e->counters.last_error = ls_now();
    ls_log_event(LS_WARN, "store error", "key", e->view.key, "error", message, NULL);
    if (e->state == LS_LEADER)
        leave_leadership(e, LS_IDLE, "session");
    e->state = LS_IDLE;
    e->hooks->error(e->owner, message);
    if (e->state == LS_IDLE)
        back_off(e, message);
}
