/* Stores as Lua objects. */
#ifndef LEADERSHIP_LUA_STORE_H
#define LEADERSHIP_LUA_STORE_H

#include <lua.h>

#include "../backends/store.h"

#define LS_STORE_METATABLE "leadership.store"

/* Registers the store metatable and store(url, opts) in the table on top. */
void ls_lua_store_open(lua_State *L);

/* The store at `index`, raising if it is not one (or is closed). */
ls_store *ls_lua_check_store(lua_State *L, int index);

#endif
