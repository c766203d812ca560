/* Candidates and followers as Lua objects. */
#ifndef LEADERSHIP_LUA_ELECTION_H
#define LEADERSHIP_LUA_ELECTION_H

#include <lua.h>

/* Registers the candidate and follower metatables and the functions
 * candidate(store, key, value, opts) and follower(store, key, opts) in the
 * table on top of the stack. */
void ls_lua_election_open(lua_State *L);

/* The engine election of the candidate or follower at `index` (raises if
 * it is neither), or NULL once it was collected.   [-0, +0, v] */
struct ls_election *ls_lua_check_election(lua_State *L, int index);

#endif
