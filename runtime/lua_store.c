#include "lua_store.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "engine.h"

typedef struct lua_store {
    ls_store *store; /* NULL once closed */
} lua_store;

ls_store *ls_lua_check_store(lua_State *L, int index)
{
    lua_store *ls = luaL_checkudata(L, index, LS_STORE_METATABLE);
    if (!ls->store)
        luaL_argerror(L, index, "store is closed");
    return ls->store;
}

/* Options nest no deeper than tls = { ca = ... }; the cap also ends a
 * table that contains itself. */
enum { MAX_OPTION_DEPTH = 4 };

/* Flattens a Lua options table into cfg: { tls = { ca = "x" } } becomes
 * "tls.ca" = "x". -1 with err on values that are not strings, numbers or
 * booleans, and on tables nested deeper than MAX_OPTION_DEPTH. */
static int flatten_options(lua_State *L, int index, const char *prefix, int depth,
                           ls_store_config *cfg, char *err, size_t errlen)
{
    if (depth > MAX_OPTION_DEPTH) {
        /* prefix is "a.b.c.d.": the name of the table too deep */
        snprintf(err, errlen, "store option '%.*s' nests tables deeper than %d levels",
                 (int)strlen(prefix) - 1, prefix, MAX_OPTION_DEPTH);
        return -1;
    }
    luaL_checkstack(L, 3, "store options");
    index = lua_absindex(L, index);
    lua_pushnil(L);
    while (lua_next(L, index)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            lua_pop(L, 2);
            snprintf(err, errlen, "store options: keys must be strings");
            return -1;
        }
        char name[256];
        snprintf(name, sizeof name, "%s%s", prefix, lua_tostring(L, -2));
        int type = lua_type(L, -1);
        if (type == LUA_TTABLE) {
            char nested[260];
            snprintf(nested, sizeof nested, "%s.", name);
            if (flatten_options(L, -1, nested, depth + 1, cfg, err, errlen) < 0) {
                lua_pop(L, 2);
                return -1;
            }
        } else if (type == LUA_TBOOLEAN) {
            ls_config_set(cfg, name, lua_toboolean(L, -1) ? "true" : "false");
        } else if (type == LUA_TSTRING || type == LUA_TNUMBER) {
            ls_config_set(cfg, name, lua_tostring(L, -1));
        } else {
            lua_pop(L, 2);
            snprintf(err, errlen, "store option '%s' must be a string, number or boolean", name);
            return -1;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* leadership.store(url [, options]) -> store | nil, err   [-(1|2), +(1|2), e] */
static int store_new(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    ls_store_config cfg = {0};
    char err[512];
    if (ls_config_parse(&cfg, url, err, sizeof err) < 0) {
        ls_config_free(&cfg);
        return luaL_error(L, "%s", err);
    }
    if (lua_istable(L, 2)) {
        if (flatten_options(L, 2, "", 1, &cfg, err, sizeof err) < 0 ||
            ls_config_timeout(&cfg, err, sizeof err) < 0) {
            ls_config_free(&cfg);
            return luaL_error(L, "%s", err);
        }
    }
    lua_store *ls = lua_newuserdatauv(L, sizeof *ls, 0);
    ls->store = NULL;
    luaL_setmetatable(L, LS_STORE_METATABLE);
    ls->store = ls_store_open(&cfg, err, sizeof err);
    if (!ls->store) {
        /* an unknown backend is a bad argument; a failing open is not */
        if (strncmp(err, "unknown store backend", 21) == 0 ||
            strncmp(err, "unknown option", 14) == 0)
            return luaL_error(L, "%s", err);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

/* store:close()   [-0, +0, -] */
static int store_close(lua_State *L)
{
    lua_store *ls = luaL_checkudata(L, 1, LS_STORE_METATABLE);
    if (ls->store) {
        ls_store_unref(ls->store);
        ls->store = NULL;
    }
    return 0;
}

/* store:url() -> the URL with credentials hidden   [-0, +1, e] */
static int store_url(lua_State *L)
{
    lua_pushstring(L, ls_lua_check_store(L, 1)->config.redacted);
    return 1;
}

/* store:inject(fault [, key | value]) -> true | nil, err   [-0, +(1|2), e]
 * Test hooks of the memory backend. */
static int store_inject(lua_State *L)
{
    ls_store *store = ls_lua_check_store(L, 1);
    const char *fault = luaL_checkstring(L, 2);
    const char *arg = NULL;
    double value = 0;
    if (lua_type(L, 3) == LUA_TSTRING)
        arg = lua_tostring(L, 3);
    else if (lua_isboolean(L, 3))
        value = lua_toboolean(L, 3);
    else
        value = luaL_optnumber(L, 3, 0);
    if (!store->backend->inject)
        return luaL_error(L, "the %s store has no fault injection", store->config.scheme);
    char err[256];
    if (store->backend->inject(store, fault, arg, value, err, sizeof err) < 0)
        return luaL_error(L, "%s", err);
    lua_pushboolean(L, 1);
    return 1;
}

static int store_tostring(lua_State *L)
{
    lua_store *ls = luaL_checkudata(L, 1, LS_STORE_METATABLE);
    lua_pushfstring(L, "leadership.store(%s)", ls->store ? ls->store->config.redacted : "closed");
    return 1;
}

void ls_lua_store_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"close", store_close}, {"url", store_url}, {"inject", store_inject}, {NULL, NULL}};
    luaL_newmetatable(L, LS_STORE_METATABLE);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, store_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, store_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, store_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    lua_pushcfunction(L, store_new);
    lua_setfield(L, -2, "store");
}
