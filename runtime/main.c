/* The `leadership` executable: Lua 5.4 with the module preloaded; the
 * command line itself is lua/leadership/cli.lua. */
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>

#include "embedded.h"
#include "lua_core.h"

/* package.preload loader for an embedded module; upvalue: its index. */
static int load_embedded(lua_State *L)
{
    const struct ls_embedded_module *m =
        &ls_embedded_modules[lua_tointeger(L, lua_upvalueindex(1))];
    if (luaL_loadbuffer(L, m->source, m->length, m->chunkname) != LUA_OK)
        return lua_error(L);
    lua_pushstring(L, m->name);
    lua_call(L, 1, 1);
    return 1;
}

static void preload_modules(lua_State *L)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_leadership_core);
    lua_setfield(L, -2, "leadership.core");
    for (int i = 0; ls_embedded_modules[i].name; i++) {
        lua_pushinteger(L, i);
        lua_pushcclosure(L, load_embedded, 1);
        lua_setfield(L, -2, ls_embedded_modules[i].name);
    }
    lua_pop(L, 1);
}

/* Runs require("leadership.cli").main(argv) and returns its exit code. */
static int run_cli(lua_State *L)
{
    int argc = (int)lua_tointeger(L, 1);
    char **argv = lua_touserdata(L, 2);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "leadership.cli");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "main");
    lua_createtable(L, argc, 0);
    for (int i = 1; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    lua_call(L, 1, 1);
    return 1;
}

static int traceback(lua_State *L)
{
    luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
    return 1;
}

int main(int argc, char **argv)
{
    lua_State *L = luaL_newstate();
    if (!L) {
        fputs("leadership: out of memory\n", stderr);
        return 70;
    }
    luaL_openlibs(L);
    preload_modules(L);
    lua_pushcfunction(L, traceback);
    lua_pushcfunction(L, run_cli);
    lua_pushinteger(L, argc);
    lua_pushlightuserdata(L, argv);
    int status = 70;
    if (lua_pcall(L, 2, 1, 1) != LUA_OK)
        fprintf(stderr, "leadership: internal error: %s\n", lua_tostring(L, -1));
    else
        status = (int)luaL_optinteger(L, -1, 0);
    lua_close(L);
    return status;
}
