/* The module leadership.core: its entry point and what the bindings share. */
#ifndef LEADERSHIP_LUA_CORE_H
#define LEADERSHIP_LUA_CORE_H

#include <lua.h>
#include <stddef.h>

/* The C half of `require "leadership"`.   [-0, +1, e] */
int luaopen_leadership_core(lua_State *L);

/* A thread whose stack the engine hooks use while Lua code may be running
 * elsewhere; never resumed. */
lua_State *ls_lua_scratch(void);

/* Pushes a leader value as Lua sees it: decoded by the Lua half (JSON
 * objects become tables), or the raw string.   [-0, +1, m] */
void ls_lua_push_value(lua_State *L, const char *value, size_t len);

/* Pushes a message handler that adds a traceback.   [-0, +1, -] */
void ls_lua_push_traceback_handler(lua_State *L);

/* __index of a userdata whose metatable holds a `methods` table and whose
 * user value 1 its own fields: methods first, then the fields.
 * [-0, +1, -] */
int ls_lua_index(lua_State *L);

#endif
