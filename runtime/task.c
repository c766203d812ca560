#include "task.h"

#include <event2/event.h>
#include <lauxlib.h>
#include <stdlib.h>

#include "log.h"
#include "loop.h"

struct ls_task {
    lua_State *co;
    int co_ref;         /* keeps the thread from being collected */
    lua_State *main;    /* the state the loop resumes from */
    struct event *wake; /* start, and the end of each sleep */
    ls_task_group *group;
    ls_task *group_next; /* in group, if any */
    const ls_task_owner *owner;
    void *owner_arg;
    unsigned long long tag;
    const char *name;
    int pending_args; /* for the first resume */
    bool running, cancelled, killed;
    double resumed_at;
};

static ls_task *current_task;
static double task_budget = 0.2;
static unsigned live_tasks;
/* Marks a yield that came from leadership.sleep (its address is the mark). */
static const char sleep_mark = 's';

/* Instructions between checks of the clock: cheap, yet fine-grained. */
enum { HOOK_INTERVAL = 1000 };

void ls_task_set_budget(double seconds) { task_budget = seconds; }
double ls_task_budget(void) { return task_budget; }
unsigned ls_task_live_count(void) { return live_tasks; }
ls_task *ls_task_current(void) { return current_task; }
unsigned long long ls_task_tag(ls_task *task) { return task->tag; }

/* Errors out of a handler that has run too long. Once it fired it fires
 * on every instruction, in the thread it fired in and in the handler's
 * own (a coroutine.resume that caught it returns there), so neither a
 * pcall nor a resume can swallow it. */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    ls_task *task = current_task;
    if (!task)
        return;
    if (!task->killed && ls_now() - task->resumed_at <= task_budget)
        return;
    task->killed = true;
    if (lua_gethookcount(L) != 1)
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    if (task->co && lua_gethookcount(task->co) != 1)
        lua_sethook(task->co, budget_hook, LUA_MASKCOUNT, 1);
    luaL_error(L, "handler %s ran over its %d ms budget without yielding: aborted", task->name,
               (int)(task_budget * 1000));
}

/* Calls upvalue 1 with the arguments, `co` held to the running handler's
 * budget meanwhile. A new coroutine inherits its creator's hook: one made
 * outside any handler (a policy's top level) has none, and a handler
 * resuming it would run it unbudgeted. A hook of someone else's (a
 * debugger's) is left alone. */
static int call_budgeted(lua_State *L, lua_State *co)
{
    bool hooked = current_task && co && !lua_gethook(co);
    if (hooked)
        lua_sethook(co, budget_hook, LUA_MASKCOUNT, HOOK_INTERVAL);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    if (hooked)
        lua_sethook(co, NULL, 0, 0);
    if (status == LUA_OK)
        return lua_gettop(L);
    /* the original prefixes its caller's position (luaL_where), which is
     * now this C function's, none: ours stands in */
    if (status != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
        luaL_where(L, 1);
        lua_insert(L, -2);
        lua_concat(L, 2);
    }
    return lua_error(L);
}

/* coroutine.resume and coroutine.close: [-?, +?, e] */
static int budgeted_resume(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTHREAD); /* the same message as the original */
    return call_budgeted(L, lua_tothread(L, 1));
}

/* What coroutine.wrap returns: [-?, +?, e] */
static int budgeted_wrapped(lua_State *L)
{
    return call_budgeted(L, lua_tothread(L, lua_upvalueindex(2)));
}

/* coroutine.wrap: [-1, +1, e] */
static int budgeted_wrap(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    /* the original's result keeps its coroutine as upvalue 1 */
    if (!lua_getupvalue(L, -1, 1) || !lua_isthread(L, -1))
        return luaL_error(L, "coroutine.wrap: no coroutine in its result");
    lua_pushcclosure(L, budgeted_wrapped, 2);
    return 1;
}

void ls_task_budget_coroutines(lua_State *L)
{
    static const struct {
        const char *name;
        lua_CFunction budgeted;
    } replaced[] = {
        {"resume", budgeted_resume},
        {"close", budgeted_resume},
        {"wrap", budgeted_wrap},
    };
    if (lua_getglobal(L, "coroutine") != LUA_TTABLE) {
        lua_pop(L, 1);
        return;
    }
    for (size_t i = 0; i < sizeof replaced / sizeof *replaced; i++) {
        lua_getfield(L, -1, replaced[i].name);
        lua_CFunction original = lua_tocfunction(L, -1);
        if (!original || original == replaced[i].budgeted) { /* loaded twice */
            lua_pop(L, 1);
            continue;
        }
        lua_pushcclosure(L, replaced[i].budgeted, 1);
        lua_setfield(L, -2, replaced[i].name);
    }
    lua_pop(L, 1);
}

static void group_unlink(ls_task *task)
{
    if (!task->group)
        return;
    for (ls_task **p = &task->group->head; *p; p = &(*p)->group_next) {
        if (*p == task) {
            *p = task->group_next;
            break;
        }
    }
    task->group = NULL;
}

/* Closes the coroutine's to-be-closed variables and frees the task. */
static void task_finish(ls_task *task)
{
    group_unlink(task);
    /* __close handlers run here; they get a fresh budget */
    ls_task *outer = current_task;
    current_task = task;
    task->resumed_at = ls_now();
    task->killed = false;
    lua_sethook(task->co, budget_hook, LUA_MASKCOUNT, HOOK_INTERVAL);
    /* a thread that died raising returns that error again: already told */
    int died = lua_status(task->co);
    if (lua_resetthread(task->co) != LUA_OK && (died == LUA_OK || died == LUA_YIELD)) {
        ls_log(LS_ERROR, "handler %s: error while closing: %s", task->name,
               lua_tostring(task->co, -1));
    }
    current_task = outer;
    event_free(task->wake);
    luaL_unref(task->main, LUA_REGISTRYINDEX, task->co_ref);
    free(task);
    live_tasks--;
    ls_loop_release();
}

/* Tasks due now run in the order they were armed: a handler spawned
 * before another (on_lost before on_elected) runs first. */
static void arm(ls_task *task, double seconds)
{
    if (!(seconds > 0)) {
        evtimer_add(task->wake, ls_loop_ready_timeout());
        return;
    }
    struct timeval tv = {(time_t)seconds, (suseconds_t)((seconds - (time_t)seconds) * 1e6)};
    evtimer_add(task->wake, &tv);
}

static void report_failure(ls_task *task)
{
    lua_State *co = task->co;
    const char *message = luaL_tolstring(co, -1, NULL); /* non-string errors too */
    luaL_traceback(co, co, message, 0);
    ls_log(LS_ERROR, "handler %s raised: %s", task->name, lua_tostring(co, -1));
    lua_pop(co, 1);
    /* a cancelled task's owner may be gone (an election collected while
     * its handler ran) */
    if (task->owner && task->owner->failed && !task->cancelled)
        task->owner->failed(task->owner_arg, message);
}

static void task_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    ls_task *task = arg;
    /* still_valid may step the election down, cancelling this very task:
     * marked running, it is only flagged, and finished here */
    task->running = true;
    bool valid = !task->owner || !task->owner->still_valid ||
                 task->owner->still_valid(task->owner_arg, task);
    task->running = false;
    if (task->cancelled || !valid) {
        task_finish(task);
        return;
    }
    int nargs = task->pending_args, nresults = 0;
    task->pending_args = 0;
    ls_task *outer = current_task;
    current_task = task;
    task->running = true;
    task->resumed_at = ls_now();
    lua_sethook(task->co, budget_hook, LUA_MASKCOUNT, HOOK_INTERVAL);
    int status = lua_resume(task->co, task->main, nargs, &nresults);
    task->running = false;
    current_task = outer;
    if (status == LUA_YIELD && !task->cancelled) {
        double seconds = 0;
        if (nresults == 2 && lua_touserdata(task->co, -2) == &sleep_mark)
            seconds = lua_tonumber(task->co, -1);
        lua_pop(task->co, nresults);
        arm(task, seconds);
        return;
    }
    if (status != LUA_OK && status != LUA_YIELD)
        report_failure(task);
    task_finish(task);
}

int ls_task_pcall(lua_State *L, int nargs, int nresults, int msgh, const char *name)
{
    /* the budget hook reads the current task: this call stands in as one,
     * running in L, with no wake-up to sleep on */
    ls_task call = {.co = L, .name = name, .resumed_at = ls_now()};
    ls_task *outer = current_task;
    current_task = &call;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_INTERVAL);
    int status = lua_pcall(L, nargs, nresults, msgh);
    lua_sethook(L, NULL, 0, 0);
    current_task = outer;
    return status;
}

ls_task *ls_task_spawn(lua_State *L, int nargs, ls_task_group *group, const ls_task_owner *owner,
                       void *arg, unsigned long long tag, const char *name)
{
    ls_task *task = calloc(1, sizeof *task);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    task->main = lua_tothread(L, -1);
    lua_pop(L, 1);
    task->co = lua_newthread(L);
    task->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_xmove(L, task->co, nargs + 1);
    task->pending_args = nargs;
    task->owner = owner;
    task->owner_arg = arg;
    task->tag = tag;
    task->name = name;
    task->wake = evtimer_new(ls_loop_base(), task_resume, task);
    if (group) {
        task->group = group;
        task->group_next = group->head;
        group->head = task;
    }
    live_tasks++;
    ls_loop_hold();
    arm(task, 0);
    return task;
}

void ls_task_cancel_group(ls_task_group *group)
{
    while (group->head) {
        ls_task *task = group->head;
        group_unlink(task);
        task->cancelled = true;
        /* a running coroutine cannot be closed now; it is when it yields */
        if (!task->running) {
            evtimer_del(task->wake);
            task_finish(task);
        }
    }
}

int ls_task_sleep(lua_State *L)
{
    double seconds = luaL_optnumber(L, 1, 0);
    luaL_argcheck(L, seconds >= 0 && seconds == seconds, 1, "sleep wants seconds >= 0");
    if (current_task && current_task->co == L && current_task->wake) {
        lua_pushlightuserdata(L, (void *)&sleep_mark);
        lua_pushnumber(L, seconds);
        return lua_yield(L, 2);
    }
    if (current_task || ls_loop_depth() > 0)
        return luaL_error(L, "leadership.sleep must be called from a handler's own coroutine "
                             "or from the main chunk");
    /* the main chunk: run the loop meanwhile */
    ls_loop_run(seconds, false);
    return 0;
}
