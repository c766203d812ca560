#include "lua_election.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "engine.h"
#include "log.h"
#include "lua_core.h"
#include "lua_store.h"
#include "task.h"

#define CANDIDATE_METATABLE "leadership.candidate"
#define FOLLOWER_METATABLE "leadership.follower"

typedef struct lua_election {
    ls_election *e;
    int self_ref; /* while running: the loop owns a reference */
    bool candidate;
    ls_task_group leader_tasks;  /* on_elected: cancelled on loss */
    ls_task_group handler_tasks; /* every other handler */
} lua_election;

static const char *const handler_names[] = {
    "on_elected", "on_lost", "on_leader_change", "on_error", "on_renewed", "retry", NULL};

static lua_election *check_election(lua_State *L, int index)
{
    lua_election *le = luaL_testudata(L, index, CANDIDATE_METATABLE);
    if (!le)
        le = luaL_checkudata(L, index, FOLLOWER_METATABLE);
    return le;
}

/* ---- handler dispatch (from engine hooks, on the scratch thread) ---- */

static bool leader_task_valid(void *arg, ls_task *task)
{
    lua_election *le = arg;
    /* checked before every resume: a leader past its deadline steps down
     * here, before any of its code runs again */
    return ls_election_is_leader(le->e) && ls_election_term(le->e) == ls_task_tag(task);
}

static void handler_failed(void *arg, const char *message);

static const ls_task_owner leader_owner = {leader_task_valid, handler_failed};
static const ls_task_owner handler_owner = {NULL, handler_failed};
static const ls_task_owner error_handler_owner = {NULL, NULL};

/* Pushes the handler `name` of le, or returns false (nothing pushed). */
static bool push_handler(lua_State *S, lua_election *le, const char *name)
{
    if (le->self_ref == LUA_NOREF)
        return false;
    lua_rawgeti(S, LUA_REGISTRYINDEX, le->self_ref);
    lua_getiuservalue(S, -1, 1);
    lua_getfield(S, -1, name);
    lua_remove(S, -2);
    if (lua_isnil(S, -1)) {
        lua_pop(S, 2);
        return false;
    }
    lua_insert(S, -2); /* handler, self */
    return true;
}

static void dispatch_error(lua_election *le, const char *message)
{
    lua_State *S = ls_lua_scratch();
    if (!push_handler(S, le, "on_error"))
        return;
    lua_pushstring(S, message);
    ls_task_spawn(S, 2, &le->handler_tasks, &error_handler_owner, le, 0, "on_error");
}

static void handler_failed(void *arg, const char *message) { dispatch_error(arg, message); }

static void hook_elected(void *owner, uint64_t term)
{
    lua_election *le = owner;
    lua_State *S = ls_lua_scratch();
    if (!push_handler(S, le, "on_elected"))
        return;
    lua_pushinteger(S, (lua_Integer)term);
    ls_task_spawn(S, 2, &le->leader_tasks, &leader_owner, le, term, "on_elected");
}

static void hook_lost(void *owner, const char *reason)
{
    lua_election *le = owner;
    ls_task_cancel_group_later(&le->leader_tasks);
    lua_State *S = ls_lua_scratch();
    if (!push_handler(S, le, "on_lost"))
        return;
    lua_pushstring(S, reason);
    ls_task_spawn(S, 2, &le->handler_tasks, &handler_owner, le, 0, "on_lost");
}

static void hook_leader_change(void *owner, const char *value, size_t len, uint64_t term)
{
    lua_election *le = owner;
    lua_State *S = ls_lua_scratch();
    if (!push_handler(S, le, "on_leader_change"))
        return;
    if (value)
        ls_lua_push_value(S, value, len);
    else
        lua_pushnil(S);
    if (value)
        lua_pushinteger(S, (lua_Integer)term);
    else
        lua_pushnil(S);
    ls_task_spawn(S, 3, &le->handler_tasks, &handler_owner, le, 0, "on_leader_change");
}

static void hook_error(void *owner, const char *message) { dispatch_error(owner, message); }

/* The default retry: 0.5 s doubling to 30 s, +-20 % jitter. */
static double default_retry(int attempt)
{
    double delay = 0.5 * pow(2, attempt - 1);
    if (delay > 30)
        delay = 30;
    return delay * (0.8 + 0.4 * ((double)rand() / RAND_MAX));
}

static double hook_retry_delay(void *owner, int attempt, const char *message, char *why,
                               size_t whylen)
{
    lua_election *le = owner;
    lua_State *S = ls_lua_scratch();
    int top = lua_gettop(S);
    if (le->self_ref == LUA_NOREF)
        return default_retry(attempt);
    lua_rawgeti(S, LUA_REGISTRYINDEX, le->self_ref);
    lua_getiuservalue(S, -1, 1);
    lua_getfield(S, -1, "retry");
    if (lua_isnil(S, -1)) {
        lua_settop(S, top);
        return default_retry(attempt);
    }
    lua_pushinteger(S, attempt);
    lua_pushstring(S, message);
    ls_lua_push_traceback_handler(S);
    lua_insert(S, -4);
    double delay = -1;
    if (ls_task_pcall(S, 2, 1, -4, "retry") != LUA_OK) {
        snprintf(why, whylen, "retry function raised: %s", lua_tostring(S, -1));
    } else if (lua_isnumber(S, -1)) {
        delay = lua_tonumber(S, -1);
        if (!(delay >= 0 && delay < 1e9)) {
            snprintf(why, whylen, "retry function returned %s, not seconds in [0, 1e9) or nil",
                     lua_tostring(S, -1));
            delay = -1;
        }
    } else if (!lua_isnil(S, -1)) {
        snprintf(why, whylen, "retry function returned a %s, not seconds or nil",
                 luaL_typename(S, -1));
    }
    lua_settop(S, top);
    return delay;
}

static void hook_stopped(void *owner)
{
    lua_election *le = owner;
    lua_State *S = ls_lua_scratch();
    luaL_unref(S, LUA_REGISTRYINDEX, le->self_ref);
    le->self_ref = LUA_NOREF;
}

/* on_renewed(c, deadline): leader work of the current term, so a stale
 * one never runs after a loss. Nothing is spawned without a handler. */
static void hook_renewed(void *owner, double deadline)
{
    lua_election *le = owner;
    lua_State *S = ls_lua_scratch();
    if (!push_handler(S, le, "on_renewed"))
        return;
    lua_pushnumber(S, deadline);
    ls_task_spawn(S, 2, &le->leader_tasks, &leader_owner, le, ls_election_term(le->e),
                  "on_renewed");
}

static const ls_election_hooks lua_hooks = {
    hook_elected,     hook_lost,    hook_leader_change, hook_error,
    hook_retry_delay, hook_stopped, hook_renewed,
};

ls_election *ls_lua_check_election(lua_State *L, int index)
{
    lua_election *le = check_election(L, index);
    return le->e;
}

/* ---- methods ---- */

/* c:run() -> true   [-0, +1, e] */
static int election_run(lua_State *L)
{
    lua_election *le = check_election(L, 1);
    luaL_argcheck(L, le->e, 1, "closed");
    if (le->self_ref == LUA_NOREF) {
        lua_pushvalue(L, 1);
        le->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    ls_election_run(le->e);
    lua_pushboolean(L, 1);
    return 1;
}

/* c:resign()   [-0, +0, e] */
static int election_resign(lua_State *L)
{
    lua_election *le = check_election(L, 1);
    if (le->e)
        ls_election_resign(le->e);
    return 0;
}

/* c:stop() -> true; idempotent   [-0, +1, -] */
static int election_stop(lua_State *L)
{
    lua_election *le = check_election(L, 1);
    if (le->e)
        ls_election_stop(le->e);
    lua_pushboolean(L, 1);
    return 1;
}

/* c:is_leader() -> boolean   [-0, +1, -] */
static int election_is_leader(lua_State *L)
{
    lua_election *le = check_election(L, 1);
    lua_pushboolean(L, le->e && ls_election_is_leader(le->e));
    return 1;
}

/* c:term() -> fencing token | nil   [-0, +1, -] */
static int election_term(lua_State *L)
{
    lua_election *le = check_election(L, 1);
    uint64_t term = le->e ? ls_election_term(le->e) : 0;
    if (term)
        lua_pushinteger(L, (lua_Integer)term);
    else
        lua_pushnil(L);
    return 1;
}

/* f:leader() -> leader, term | nil   [-0, +(1|2), -] */
static int election_leader(lua_State *L)
{
    lua_election *le = check_election(L, 1);
    size_t len;
    uint64_t term;
    const char *value = le->e ? ls_election_leader_value(le->e, &len, &term) : NULL;
    if (!value) {
        lua_pushnil(L);
        return 1;
    }
    ls_lua_push_value(L, value, len);
    lua_pushinteger(L, (lua_Integer)term);
    return 2;
}

/* c:state() -> "idle" | "campaigning" | "leader" | ...   [-0, +1, -] */
static int election_state(lua_State *L)
{
    lua_election *le = check_election(L, 1);
    if (le->e)
        ls_election_is_leader(le->e); /* past its deadline, a leader steps down first */
    lua_pushstring(L, le->e ? ls_state_name(ls_election_state(le->e)) : "stopped");
    return 1;
}

/* c:key() -> key   [-0, +1, -] */
static int election_key(lua_State *L)
{
    lua_election *le = check_election(L, 1);
    lua_pushstring(L, le->e ? ls_election_key(le->e) : "");
    return 1;
}

/* c:deadline() -> monotonic seconds | nil   [-0, +1, -] */
static int election_deadline(lua_State *L)
{
    lua_election *le = check_election(L, 1);
    double deadline = le->e ? ls_election_deadline(le->e) : 0;
    if (deadline > 0)
        lua_pushnumber(L, deadline);
    else
        lua_pushnil(L);
    return 1;
}

/* c:stats() -> { elected, lost, errors, renewals, ... }   [-0, +1, m] */
static int election_stats(lua_State *L)
{
    lua_election *le = check_election(L, 1);
    lua_newtable(L);
    if (!le->e)
        return 1;
    const ls_election_counters *c = ls_election_counters_of(le->e);
    lua_pushinteger(L, (lua_Integer)c->elected);
    lua_setfield(L, -2, "elected");
    lua_pushinteger(L, (lua_Integer)c->lost);
    lua_setfield(L, -2, "lost");
    lua_pushinteger(L, (lua_Integer)c->errors);
    lua_setfield(L, -2, "errors");
    lua_pushinteger(L, (lua_Integer)c->renewals);
    lua_setfield(L, -2, "renewals");
    lua_pushnumber(L, c->latency_sum);
    lua_setfield(L, -2, "renewal_latency_sum");
    lua_pushnumber(L, c->last_renewal_latency);
    lua_setfield(L, -2, "last_renewal_latency");
    lua_newtable(L);
    for (int i = 0; i < 12; i++) {
        lua_pushinteger(L, (lua_Integer)c->latency_buckets[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "renewal_latency_buckets");
    return 1;
}

/* c:cancel_handlers() — ends every running handler coroutine, closing its
 * to-be-closed variables (a policy reload swaps handlers this way).   [-0, +0, -] */
static int election_cancel_handlers(lua_State *L)
{
    lua_election *le = check_election(L, 1);
    ls_task_cancel_group(&le->leader_tasks);
    ls_task_cancel_group(&le->handler_tasks);
    return 0;
}

/* c:spawn_leader(fn, ...) — runs fn(...) as leader work of the current
 * term: cancelled on loss like on_elected. false if not leader.   [-0, +1, e] */
static int election_spawn_leader(lua_State *L)
{
    lua_election *le = check_election(L, 1);
    luaL_checkany(L, 2);
    if (!le->e || !ls_election_is_leader(le->e) || le->self_ref == LUA_NOREF) {
        lua_pushboolean(L, 0);
        return 1;
    }
    int nargs = lua_gettop(L) - 2;
    lua_State *S = ls_lua_scratch();
    lua_xmove(L, S, nargs + 1);
    ls_task_spawn(S, nargs, &le->leader_tasks, &leader_owner, le, ls_election_term(le->e),
                  "on_elected");
    lua_pushboolean(L, 1);
    return 1;
}

/* Stops and frees: __gc, __close and close() all end here.   [-0, +0, -] */
static int election_close(lua_State *L)
{
    lua_election *le = check_election(L, 1);
    if (!le->e)
        return 0;
    ls_election_stop(le->e);
    ls_task_cancel_group(&le->leader_tasks);
    ls_task_cancel_group(&le->handler_tasks);
    /* the memory itself goes with the collector (election_gc) */
    return 0;
}

static int election_gc(lua_State *L)
{
    lua_election *le = check_election(L, 1);
    /* its handlers' tasks go too: one still running holds le as its owner,
     * and must not report to it once le is freed */
    election_close(L);
    if (le->e) {
        ls_election_free(le->e);
        le->e = NULL;
    }
    return 0;
}

static bool is_callable(lua_State *L, int index)
{
    if (lua_isfunction(L, index))
        return true;
    if (!lua_getmetatable(L, index))
        return false;
    bool callable = lua_getfield(L, -1, "__call") != LUA_TNIL;
    lua_pop(L, 2);
    return callable;
}

/* __newindex: handlers must be callable; a misspelt on_* is an error.
 * Other fields are the user's.   [-0, +0, e] */
static int election_newindex(lua_State *L)
{
    check_election(L, 1);
    if (lua_type(L, 2) == LUA_TSTRING) {
        const char *name = lua_tostring(L, 2);
        bool known = false;
        for (const char *const *h = handler_names; *h; h++)
            known = known || !strcmp(name, *h);
        if (!known && !strncmp(name, "on_", 3)) {
            const char *hint = ls_closest_word(name, handler_names);
            return luaL_error(L, "unknown handler '%s'%s%s%s", name, hint ? " (did you mean '" : "",
                              hint ? hint : "", hint ? "'?)" : "");
        }
        if (known && !lua_isnil(L, 3) && !is_callable(L, 3))
            return luaL_error(L, "%s must be a function or a callable table, got %s", name,
                              luaL_typename(L, 3));
    }
    lua_getiuservalue(L, 1, 1);
    lua_insert(L, 2);
    lua_rawset(L, 2);
    return 0;
}

static int election_tostring(lua_State *L)
{
    lua_election *le = check_election(L, 1);
    lua_pushfstring(L, "leadership.%s(%s, %s)", le->candidate ? "candidate" : "follower",
                    le->e ? ls_election_key(le->e) : "?",
                    le->e ? ls_state_name(ls_election_state(le->e)) : "closed");
    return 1;
}

/* ---- constructors ---- */

static void check_key(lua_State *L, int index)
{
    size_t len;
    const char *key = luaL_checklstring(L, index, &len);
    luaL_argcheck(L, len > 0, index, "key must not be empty");
    luaL_argcheck(L, len <= 1024, index, "key longer than 1024 bytes");
    luaL_argcheck(L, strlen(key) == len, index, "key contains a NUL byte");
}

/* Reads the options table at `index`: ttl, renew_deadline. */
static void check_options(lua_State *L, int index, ls_store *store, double *ttl,
                          double *renew_deadline)
{
    static const char *const known[] = {"ttl", "renew_deadline", NULL};
    *ttl = 15;
    *renew_deadline = 0;
    if (lua_isnoneornil(L, index))
        goto range;
    luaL_checktype(L, index, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, index)) {
        const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
        bool ok = false;
        for (const char *const *k = known; *k; k++)
            ok = ok || !strcmp(name, *k);
        if (!ok) {
            const char *hint = ls_closest_word(name, known);
            luaL_error(L, "unknown election option '%s'%s%s%s", name,
                       hint ? " (did you mean '" : "", hint ? hint : "", hint ? "'?)" : "");
        }
        if (!lua_isnumber(L, -1))
            luaL_error(L, "election option '%s' must be a number of seconds, got %s", name,
                       luaL_typename(L, -1));
        double v = lua_tonumber(L, -1);
        if (!strcmp(name, "ttl"))
            *ttl = v;
        else
            *renew_deadline = v;
        lua_pop(L, 1);
    }
range:;
    const ls_backend *b = store->backend;
    char message[200];
    if (!(*ttl >= b->min_ttl && *ttl <= b->max_ttl)) {
        snprintf(message, sizeof message,
                 "ttl %g is out of range for the %s store (%g to %g seconds)", *ttl, b->scheme,
                 b->min_ttl, b->max_ttl);
        luaL_error(L, "%s", message);
    }
    if (*renew_deadline != 0 && !(*renew_deadline > 0 && *renew_deadline < *ttl)) {
        snprintf(message, sizeof message, "renew_deadline %g must be between 0 and the ttl (%g)",
                 *renew_deadline, *ttl);
        luaL_error(L, "%s", message);
    }
}

static int election_new(lua_State *L, bool candidate)
{
    ls_store *store = ls_lua_check_store(L, 1);
    check_key(L, 2);
    size_t len = 0;
    const char *value = NULL;
    int options = 3;
    if (candidate) {
        value = luaL_checklstring(L, 3, &len);
        options = 4;
    }
    double ttl, renew_deadline;
    check_options(L, options, store, &ttl, &renew_deadline);
    lua_election *le = lua_newuserdatauv(L, sizeof *le, 1);
    memset(le, 0, sizeof *le);
    le->self_ref = LUA_NOREF;
    le->candidate = candidate;
    luaL_setmetatable(L, candidate ? CANDIDATE_METATABLE : FOLLOWER_METATABLE);
    lua_newtable(L);
    lua_setiuservalue(L, -2, 1);
    le->e =
        ls_election_new(store, lua_tostring(L, 2), value, len, ttl, renew_deadline, &lua_hooks, le);
    return 1;
}

/* leadership.candidate(store, key, value [, options]) -> candidate   [-0, +1, e] */
static int candidate_new(lua_State *L) { return election_new(L, true); }

/* leadership.follower(store, key [, options]) -> follower   [-0, +1, e] */
static int follower_new(lua_State *L) { return election_new(L, false); }

static void new_metatable(lua_State *L, const char *name, const luaL_Reg *methods)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "methods");
    lua_pushcfunction(L, ls_lua_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, election_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, election_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, election_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, election_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
}

void ls_lua_election_open(lua_State *L)
{
    static const luaL_Reg candidate_methods[] = {
        {"run", election_run},
        {"resign", election_resign},
        {"stop", election_stop},
        {"close", election_close},
        {"is_leader", election_is_leader},
        {"term", election_term},
        {"leader", election_leader},
        {"state", election_state},
        {"key", election_key},
        {"deadline", election_deadline},
        {"stats", election_stats},
        {"cancel_handlers", election_cancel_handlers},
        {"spawn_leader", election_spawn_leader},
        {NULL, NULL},
    };
    static const luaL_Reg follower_methods[] = {
        {"run", election_run},
        {"stop", election_stop},
        {"close", election_close},
        {"leader", election_leader},
        {"state", election_state},
        {"key", election_key},
        {"stats", election_stats},
        {"cancel_handlers", election_cancel_handlers},
        {NULL, NULL},
    };
    new_metatable(L, CANDIDATE_METATABLE, candidate_methods);
    new_metatable(L, FOLLOWER_METATABLE, follower_methods);
    lua_pushcfunction(L, candidate_new);
    lua_setfield(L, -2, "candidate");
    lua_pushcfunction(L, follower_new);
    lua_setfield(L, -2, "follower");
}
