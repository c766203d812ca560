/* leadership.command: a command run in a process group of its own while
 * this process leads (`leadership exec`), guarded by a watchdog process,
 * ended as a whole group (SIGTERM, then SIGKILL), reaped on SIGCHLD. */
#ifndef LEADERSHIP_EXEC_H
#define LEADERSHIP_EXEC_H

#include <lua.h>

/* leadership.command(argv, { grace =, eof_grace = }) -> command | nil, err
 * Forks the watchdog at once: make it before opening a ZooKeeper store
 * (no threads yet). Methods: start(env, term_at, kill_at), guard(term_at,
 * kill_at), terminate(kill_at), running(), pid(), close(); handlers
 * on_exit(cmd, status, cause) and on_error(cmd, message).   [-2, +(1|2), e] */
int ls_lua_command_new(lua_State *L);

#endif
