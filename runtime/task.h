/* Handlers as coroutines on the loop thread: spawn, sleep, cancel, and the
 * count hook that aborts a handler running too long without yielding. */
#ifndef LEADERSHIP_TASK_H
#define LEADERSHIP_TASK_H

#include <lua.h>
#include <stdbool.h>

typedef struct ls_task ls_task;

/* Tasks that are cancelled together (an election's leader work). */
typedef struct ls_task_group {
    ls_task *head;
} ls_task_group;

typedef struct ls_task_owner {
    /* Checked before every resume; false cancels the task instead. */
    bool (*still_valid)(void *arg, ls_task *task);
    /* A handler raised (message without traceback); NULL: only logged. */
    void (*failed)(void *arg, const char *message);
} ls_task_owner;

/* Runs the function below `nargs` arguments on top of L as a new task in
 * `group` (may be NULL), started from the loop. Pops them. `tag` is
 * kept for still_valid (the term of an on_elected task). */
ls_task *ls_task_spawn(lua_State *L, int nargs, ls_task_group *group, const ls_task_owner *owner,
                       void *arg, unsigned long long tag, const char *name);

unsigned long long ls_task_tag(ls_task *task);

/* Cancels every task of the group: never resumed again, to-be-closed
 * variables closed (at once, or when a running one next yields). */
void ls_task_cancel_group(ls_task_group *group);
/* The same, their to-be-closed variables closed on the next loop turn: for
 * engine callbacks, amid which no Lua may run that could stop or free the
 * election (a __close may do both). */
void ls_task_cancel_group_later(ls_task_group *group);

/* The task whose coroutine is running, or NULL. */
ls_task *ls_task_current(void);

/* leadership.sleep(s) / coroutine.yield() from a task: [-?, +?, e] */
int ls_task_sleep(lua_State *L);

/* lua_pcall of a policy function that runs outside any task (the retry
 * function), held to the handler budget: a loop in it cannot stall the
 * renewals of every election. It cannot sleep. */
int ls_task_pcall(lua_State *L, int nargs, int nresults, int msgh, const char *name);

/* Sets tasks up in the module's state: the set of handlers' threads, and
 * coroutine.resume, .close and .wrap replaced with versions that hold a
 * coroutine a handler resumes to the handler's budget (and refuse a
 * handler's own). */
void ls_task_open(lua_State *L);

/* Seconds a handler may run without yielding (default 0.2). */
void ls_task_set_budget(double seconds);
double ls_task_budget(void);

unsigned ls_task_live_count(void);

#endif
