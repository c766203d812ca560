/* leadership.watch_file: a file's changes, seen through inotify on its
 * directory and debounced, run a Lua function as a handler task. */
#ifndef LEADERSHIP_WATCH_H
#define LEADERSHIP_WATCH_H

#include <lua.h>

/* leadership.watch_file(path, fn | nil [, quiet]) -> true | nil, message
 * fn(path) runs once per burst of changes, `quiet` seconds (default 0.1)
 * after the last one; nil stops watching path.   [-0, +(1|2), e] */
int ls_watch_file(lua_State *L);

#endif
