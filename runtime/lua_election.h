/* Candidates and followers as Lua objects. */
#ifndef LEADERSHIP_LUA_ELECTION_H
#define LEADERSHIP_LUA_ELECTION_H

#include <lua.h>

/* Registers the candidate and follower metatables and the functions
 * candidate(store, key, value, opts) and follower(store, key, opts) in the
 * table on top of the stack. */
void ls_lua_election_open(lua_State *L);

#endif
