#include "lua_core.h"

#include <event2/event.h>
#include <lauxlib.h>
#include <math.h>
#include <signal.h>
#include <string.h>

#include "engine.h"
#include "exec.h"
#include "log.h"
#include "loop.h"
#include "lua_election.h"
#include "lua_store.h"
#include "metrics.h"
#include "task.h"
#include "watch.h"

static lua_State *scratch_thread;
/* Registry keys: the addresses of these statics. */
static const char scratch_key = 's';
static const char decoder_key = 'd';
static const char unload_key = 'u';

lua_State *ls_lua_scratch(void) { return scratch_thread; }

static int traceback_handler(lua_State *L)
{
    const char *message = luaL_tolstring(L, 1, NULL);
    luaL_traceback(L, L, message, 1);
    return 1;
}

void ls_lua_push_traceback_handler(lua_State *L) { lua_pushcfunction(L, traceback_handler); }

int ls_lua_index(lua_State *L)
{
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "methods");
    lua_pushvalue(L, 2);
    if (lua_rawget(L, -2) != LUA_TNIL)
        return 1;
    lua_getiuservalue(L, 1, 1);
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

void ls_lua_push_value(lua_State *L, const char *value, size_t len)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &decoder_key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushlstring(L, value, len);
        return;
    }
    lua_pushlstring(L, value, len);
    /* the decoder may be anyone's: held to the handler budget */
    if (ls_task_pcall(L, 1, 1, 0, "value decoder") != LUA_OK) {
        lua_pop(L, 1);
        lua_pushlstring(L, value, len);
    }
}

/* leadership.now() -> monotonic seconds   [-0, +1, -] */
static int core_now(lua_State *L)
{
    lua_pushnumber(L, ls_now());
    return 1;
}

/* leadership.time() -> wall-clock seconds   [-0, +1, -] */
static int core_time(lua_State *L)
{
    lua_pushnumber(L, ls_wall());
    return 1;
}

/* leadership.run([timeout]) -> true if everything stopped   [-0, +1, e] */
static int core_run(lua_State *L)
{
    double timeout = luaL_optnumber(L, 1, -1);
    if (timeout == HUGE_VAL)
        timeout = -1; /* no limit, as without one */
    else if (timeout > LS_LOOP_MAX_WAIT)
        timeout = LS_LOOP_MAX_WAIT;
    if (ls_task_current() || ls_loop_depth() > 0)
        return luaL_error(L, "leadership.run cannot be called from inside the loop (a handler)");
    lua_pushboolean(L, ls_loop_run(timeout, true));
    return 1;
}

/* leadership.handler_budget([seconds]) -> seconds   [-0, +1, e] */
static int core_handler_budget(lua_State *L)
{
    if (!lua_isnoneornil(L, 1)) {
        double budget = luaL_checknumber(L, 1);
        luaL_argcheck(L, budget > 0 && budget < 3600, 1, "budget must be in (0, 3600) seconds");
        ls_task_set_budget(budget);
    }
    lua_pushnumber(L, ls_task_budget());
    return 1;
}

/* leadership.log(level, message)   [-0, +0, e] */
static int core_log(lua_State *L)
{
    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    int level = luaL_checkoption(L, 1, NULL, levels);
    ls_log((enum ls_log_level)level, "%s", luaL_checkstring(L, 2));
    return 0;
}

/* leadership.log_config{ level =, format = }   [-0, +0, e] */
static int core_log_config(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    if (lua_getfield(L, 1, "level") != LUA_TNIL && ls_log_set_level(luaL_checkstring(L, -1)) < 0)
        return luaL_error(L, "unknown log level '%s' (debug, info, warn, error)",
                          lua_tostring(L, -1));
    if (lua_getfield(L, 1, "format") != LUA_TNIL && ls_log_set_format(luaL_checkstring(L, -1)) < 0)
        return luaL_error(L, "unknown log format '%s' (text, json)", lua_tostring(L, -1));
    return 0;
}

/* leadership.set_value_decoder(fn)   [-0, +0, -] */
static int core_set_value_decoder(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_pushvalue(L, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &decoder_key);
    return 0;
}

/* leadership.live() -> { elections, stores, tasks, holds }   [-0, +1, m]
 * What is alive, for the specs' leak checks. */
static int core_live(lua_State *L)
{
    lua_newtable(L);
    lua_pushinteger(L, ls_election_live_count());
    lua_setfield(L, -2, "elections");
    lua_pushinteger(L, ls_store_live_count());
    lua_setfield(L, -2, "stores");
    lua_pushinteger(L, ls_task_live_count());
    lua_setfield(L, -2, "tasks");
    lua_pushinteger(L, ls_loop_holds());
    lua_setfield(L, -2, "holds");
    return 1;
}

/* ---- signals ---- */

typedef struct signal_handler {
    struct event *ev;
    int fn_ref;
    const char *name;
} signal_handler;

static signal_handler signal_handlers[] = {
    {NULL, LUA_NOREF, "TERM"}, {NULL, LUA_NOREF, "INT"},  {NULL, LUA_NOREF, "HUP"},
    {NULL, LUA_NOREF, "USR1"}, {NULL, LUA_NOREF, "USR2"},
};
static const int signal_numbers[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2};

static void signal_cb(evutil_socket_t fd, short what, void *arg)
{
    signal_handler *h = arg;
    lua_State *S = scratch_thread;
    lua_rawgeti(S, LUA_REGISTRYINDEX, h->fn_ref);
    lua_pushstring(S, h->name);
    ls_task_spawn(S, 1, NULL, NULL, NULL, 0, "signal handler");
}

/* leadership.on_signal(name, fn | nil): fn(name) runs as a handler when
 * the signal arrives, instead of its default action.   [-0, +0, e] */
static int core_on_signal(lua_State *L)
{
    static const char *const names[] = {"TERM", "INT", "HUP", "USR1", "USR2", NULL};
    int i = luaL_checkoption(L, 1, NULL, names);
    signal_handler *h = &signal_handlers[i];
    if (h->ev) {
        event_free(h->ev);
        h->ev = NULL;
        luaL_unref(L, LUA_REGISTRYINDEX, h->fn_ref);
        h->fn_ref = LUA_NOREF;
    }
    if (lua_isnoneornil(L, 2))
        return 0;
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    h->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    h->ev = evsignal_new(ls_loop_base(), signal_numbers[i], signal_cb, h);
    event_add(h->ev, NULL);
    return 0;
}

/* Finalizer of a sentinel made before any other object of the module:
 * Lua finalizes in reverse order, so this runs last at lua_close. */
static int core_unload(lua_State *L)
{
    for (size_t i = 0; i < sizeof signal_handlers / sizeof *signal_handlers; i++) {
        if (signal_handlers[i].ev) {
            event_free(signal_handlers[i].ev);
            signal_handlers[i].ev = NULL;
        }
    }
    ls_loop_free();
    scratch_thread = NULL;
    return 0;
}

int luaopen_leadership_core(lua_State *L)
{
    static const luaL_Reg functions[] = {
        {"now", core_now},
        {"time", core_time},
        {"sleep", ls_task_sleep},
        {"run", core_run},
        {"handler_budget", core_handler_budget},
        {"log", core_log},
        {"log_config", core_log_config},
        {"set_value_decoder", core_set_value_decoder},
        {"live", core_live},
        {"on_signal", core_on_signal},
        {"watch_file", ls_watch_file},
        {"metrics", ls_lua_metrics_new},
        {"command", ls_lua_command_new},
        {NULL, NULL},
    };
    if (!scratch_thread) {
        lua_newuserdatauv(L, 1, 0);
        lua_newtable(L);
        lua_pushcfunction(L, core_unload);
        lua_setfield(L, -2, "__gc");
        lua_setmetatable(L, -2);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &unload_key);
        scratch_thread = lua_newthread(L);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &scratch_key);
    }
    ls_task_open(L);
    luaL_newlib(L, functions);
    ls_lua_store_open(L);
    ls_lua_election_open(L);
    return 1;
}
