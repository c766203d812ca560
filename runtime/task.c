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
/* Registry key of the set of live tasks' threads (weak keys), made by
 * ls_task_open. */
static const char task_threads_key = 't';

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

/* Puts co under the budget hook while a handler runs it. A new coroutine
 * inherits its creator's hook: one made outside any handler (a policy's
 * top level) has none, and a handler resuming it would run it unbudgeted.
 * The hook stays (outside handlers it does nothing); a hook of someone
 * else's (a debugger's) is left alone. */
static void budget_coroutine(lua_State *co)
{
    if (current_task && co && !lua_gethook(co))
        lua_sethook(co, budget_hook, LUA_MASKCOUNT, HOOK_INTERVAL);
}

/* Is thread (at index) a live task's? */
static bool is_task_thread(lua_State *L, int index)
{
    index = lua_absindex(L, index);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &task_threads_key);
    lua_pushvalue(L, index);
    bool found = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 2);
    return found;
}

/* The originals are called in this function's frame, not through
 * lua_call: their messages name the caller's position as before, and a
 * resume costs no extra C level. */
static int call_original(lua_State *L, int upvalue)
{
    return lua_tocfunction(L, lua_upvalueindex(upvalue))(L);
}

/* coroutine.resume: [-?, +?, e]. A handler's own coroutine is the
 * runtime's to resume: resumed from elsewhere, it would run leader code
 * unchecked against the deadline, and could be closed while it runs. */
static int budgeted_resume(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTHREAD); /* the same message as the original */
    if (is_task_thread(L, 1)) {
        lua_pushboolean(L, 0);
        lua_pushliteral(L, "cannot resume a handler's own coroutine: the runtime does");
        return 2;
    }
    budget_coroutine(lua_tothread(L, 1));
    return call_original(L, 1);
}

/* coroutine.close: [-?, +?, e] */
static int budgeted_close(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTHREAD);
    if (is_task_thread(L, 1))
        return luaL_error(L, "cannot close a handler's own coroutine: the runtime does");
    budget_coroutine(lua_tothread(L, 1));
    return call_original(L, 1);
}

/* What coroutine.wrap returns: upvalue 1 the coroutine (where the
 * original function reads it), 2 the original.   [-?, +?, e] */
static int budgeted_wrapped(lua_State *L)
{
    budget_coroutine(lua_tothread(L, lua_upvalueindex(1)));
    return call_original(L, 2);
}

/* coroutine.wrap: [-1, +1, e] */
static int budgeted_wrap(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    call_original(L, 1);
    /* the original's result keeps its coroutine as upvalue 1 */
    if (!lua_iscfunction(L, -1) || !lua_getupvalue(L, -1, 1) || !lua_isthread(L, -1))
        return luaL_error(L, "coroutine.wrap: no coroutine in its result");
    lua_insert(L, -2);
    lua_pushcclosure(L, budgeted_wrapped, 2);
    return 1;
}

void ls_task_open(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &task_threads_key) != LUA_TTABLE) {
        lua_newtable(L);
        lua_newtable(L);
        lua_pushliteral(L, "k");
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &task_threads_key);
    }
    lua_pop(L, 1);
    static const struct {
        const char *name;
        lua_CFunction budgeted;
    } replaced[] = {
        {"resume", budgeted_resume},
        {"close", budgeted_close},
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
        const char *message = lua_tostring(task->co, -1);
        ls_log(LS_ERROR, "handler %s: error while closing: %s", task->name,
               message ? message : luaL_typename(task->co, -1));
    }
    current_task = outer;
    event_free(task->wake);
    lua_rawgetp(task->main, LUA_REGISTRYINDEX, &task_threads_key);
    lua_pushthread(task->co);
    lua_xmove(task->co, task->main, 1);
    lua_pushnil(task->main);
    lua_rawset(task->main, -3);
    lua_pop(task->main, 1);
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

/* The error object as text: [-0, +1, e] (a __tostring may raise) */
static int error_text(lua_State *L)
{
    luaL_tolstring(L, 1, NULL);
    return 1;
}

static void report_failure(ls_task *task)
{
    /* non-string errors too, their __tostring run protected and budgeted,
     * on a thread of their own: a dead coroutine runs nothing, and the
     * main thread may be in the middle of a resume */
    lua_State *co = task->co, *L = lua_newthread(task->main);
    const char *type = luaL_typename(co, -1);
    lua_pushcfunction(L, error_text);
    lua_xmove(co, L, 1);
    if (ls_task_pcall(L, 1, 1, 0, task->name) != LUA_OK || !lua_isstring(L, -1)) {
        lua_pop(L, 1);
        lua_pushfstring(L, "(a %s error object whose __tostring failed)", type);
    }
    const char *message = lua_tostring(L, -1);
    luaL_traceback(L, co, message, 0);
    ls_log(LS_ERROR, "handler %s raised: %s", task->name, lua_tostring(L, -1));
    /* a cancelled task's owner may be gone (an election collected while
     * its handler ran) */
    if (task->owner && task->owner->failed && !task->cancelled)
        task->owner->failed(task->owner_arg, message);
    lua_pop(task->main, 1); /* the thread, and its strings with it */
}

static void task_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    ls_task *task = arg;
    /* cancelled, its owner may be gone */
    if (task->cancelled) {
        task_finish(task);
        return;
    }
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
    /* put back what was there: an outer call's budget, on a nested one */
    lua_Hook hook = lua_gethook(L);
    int mask = lua_gethookmask(L), count = lua_gethookcount(L);
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_INTERVAL);
    int status = lua_pcall(L, nargs, nresults, msgh);
    lua_sethook(L, hook, mask, count);
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
    lua_rawgetp(L, LUA_REGISTRYINDEX, &task_threads_key);
    lua_pushvalue(L, -2);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
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

static void cancel_group(ls_task_group *group, bool now)
{
    while (group->head) {
        ls_task *task = group->head;
        group_unlink(task);
        task->cancelled = true;
        /* a running coroutine cannot be closed now; it is when it yields */
        if (task->running)
            continue;
        evtimer_del(task->wake);
        if (now)
            task_finish(task);
        else
            arm(task, 0); /* task_resume finishes it */
    }
}

void ls_task_cancel_group(ls_task_group *group) { cancel_group(group, true); }

void ls_task_cancel_group_later(ls_task_group *group) { cancel_group(group, false); }

int ls_task_sleep(lua_State *L)
{
    double seconds = luaL_optnumber(L, 1, 0);
    luaL_argcheck(L, seconds >= 0 && seconds == seconds, 1, "sleep wants seconds >= 0");
    if (seconds > LS_LOOP_MAX_WAIT)
        seconds = LS_LOOP_MAX_WAIT;
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
