/* The command of `leadership exec`. CMD gets a process group of its own,
 * so one kill(-pgid) reaches every process it started (no grandchild
 * survives, unlike consul lock's children: hashicorp/consul issues 797 and
 * 2022). This process becomes a child subreaper, so the group's orphans
 * are reparented here and reaped here: "the group is gone" is then known
 * exactly, from waitpid(-pgid) failing with ECHILD, before leadership is
 * released or a new term's command is started.
 *
 * The watchdog (watchdog.c) is armed before CMD may run (the child waits
 * for a go byte) and re-armed on each renewal, so the group is killed in
 * time even when this process is paused or dead. */
#define _GNU_SOURCE
#include "exec.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "lua_core.h"
#include "task.h"
#include "watchdog.h"

#define COMMAND_METATABLE "leadership.command"

extern char **environ;

typedef struct command {
    char **argv;      /* NULL-terminated copy */
    double grace;     /* SIGTERM to SIGKILL for what outlives CMD itself */
    double eof_grace; /* the watchdog's, when leadership dies */
    ls_watchdog *watchdog;
    struct event *sigchld, *watchdog_ev, *kill_timer;
    pid_t pid;      /* CMD itself while it runs, else 0 */
    pid_t pgid;     /* its group while any of it may live, else 0 */
    int status;     /* CMD's exit status (128 + signal if killed) */
    bool termed;    /* we sent SIGTERM to the group */
    double kill_at; /* our SIGKILL is due (monotonic), 0: none */
    /* why CMD ended: NULL (by itself), "terminated", "watchdog"; set only
     * while CMD runs, so what a finished CMD left ending later is no cause */
    const char *cause;
    bool holding;
    int self_ref; /* until close: handlers need the object */
} command;

static const char *const handler_names[] = {"on_exit", "on_error", NULL};

static command *check_command(lua_State *L, int index)
{
    return luaL_checkudata(L, index, COMMAND_METATABLE);
}

/* ---- handlers, on the scratch thread ---- */

/* Pushes handler `name` and the object; false (nothing pushed) if none. */
static bool push_handler(lua_State *S, command *c, const char *name)
{
    if (c->self_ref == LUA_NOREF)
        return false;
    lua_rawgeti(S, LUA_REGISTRYINDEX, c->self_ref);
    lua_getiuservalue(S, -1, 1);
    if (lua_getfield(S, -1, name) == LUA_TNIL) {
        lua_pop(S, 3);
        return false;
    }
    lua_replace(S, -2); /* object, handler */
    lua_insert(S, -2);  /* handler, object */
    return true;
}

static void dispatch_exit(command *c, int status, const char *cause)
{
    lua_State *S = ls_lua_scratch();
    if (!push_handler(S, c, "on_exit"))
        return;
    lua_pushinteger(S, status);
    if (cause)
        lua_pushstring(S, cause);
    else
        lua_pushnil(S);
    ls_task_spawn(S, 3, NULL, NULL, NULL, 0, "on_exit");
}

static void dispatch_error(command *c, const char *message)
{
    lua_State *S = ls_lua_scratch();
    if (!push_handler(S, c, "on_error"))
        return;
    lua_pushstring(S, message);
    ls_task_spawn(S, 2, NULL, NULL, NULL, 0, "on_error");
}

/* ---- the group ---- */

static void log_pgid(enum ls_log_level level, const char *event, pid_t pgid, const char *name,
                     const char *value)
{
    char text[16];
    snprintf(text, sizeof text, "%d", (int)pgid);
    ls_log_event(level, event, "pgid", text, name, value, NULL);
}

static void kill_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    command *c = arg;
    if (!c->pgid)
        return;
    log_pgid(LS_WARN, "SIGKILL to command", c->pgid, "why", "grace over");
    kill(-c->pgid, SIGKILL);
}

/* SIGTERM to the whole group (once), SIGKILL at kill_at (the earliest
 * asked for wins). */
static void terminate_group(command *c, double kill_at)
{
    if (!c->pgid)
        return;
    if (!c->termed) {
        c->termed = true;
        log_pgid(LS_INFO, "SIGTERM to command", c->pgid, NULL, NULL);
        kill(-c->pgid, SIGTERM);
        kill(-c->pgid, SIGCONT); /* a stopped process would never see it */
    }
    if (c->kill_at && c->kill_at <= kill_at)
        return;
    c->kill_at = kill_at;
    double in = kill_at - ls_now();
    if (in <= 0) {
        kill_timer_cb(-1, 0, c);
        return;
    }
    struct timeval tv = {(time_t)in, (suseconds_t)((in - (time_t)in) * 1e6)};
    evtimer_add(c->kill_timer, &tv);
}

static void group_gone(command *c)
{
    if (c->watchdog)
        ls_watchdog_disarm(c->watchdog);
    evtimer_del(c->kill_timer);
    c->pgid = 0;
    c->termed = false;
    c->kill_at = 0;
    const char *cause = c->cause;
    c->cause = NULL;
    if (c->holding) {
        c->holding = false;
        ls_loop_release();
    }
    dispatch_exit(c, c->status, cause);
}

static void main_exited(command *c, int wstatus)
{
    c->status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
    char status[16];
    snprintf(status, sizeof status, "%d", c->status);
    log_pgid(LS_INFO, "command exited", c->pid, "status", status);
    c->pid = 0;
}

static void watchdog_gone(command *c)
{
    if (!c->watchdog)
        return;
    event_del(c->watchdog_ev);
    ls_watchdog_close(c->watchdog);
    c->watchdog = NULL;
    ls_log_event(LS_ERROR, "watchdog exited", NULL);
    dispatch_error(c, "the watchdog process exited: the command is no longer guarded");
}

/* Reports from the watchdog: read before reaping, so a group it killed is
 * known as such. */
static void drain_watchdog(command *c)
{
    ls_watchdog_report report;
    int r;
    while (c->watchdog && (r = ls_watchdog_read(c->watchdog, &report)) != 0) {
        if (r < 0) {
            watchdog_gone(c);
            return;
        }
        if (c->pid && report.pgid == c->pgid && !c->cause)
            c->cause = "watchdog";
    }
}

static void reap(command *c)
{
    drain_watchdog(c);
    if (c->watchdog && waitpid(ls_watchdog_pid(c->watchdog), NULL, WNOHANG) > 0)
        watchdog_gone(c);
    if (!c->pgid)
        return;
    int wstatus;
    if (c->pid && waitpid(c->pid, &wstatus, WNOHANG) == c->pid)
        main_exited(c, wstatus);
    bool gone = false;
    for (;;) {
        pid_t r = waitpid(-c->pgid, &wstatus, WNOHANG);
        if (r > 0) {
            if (r == c->pid)
                main_exited(c, wstatus);
            continue;
        }
        gone = r < 0 && errno == ECHILD;
        break;
    }
    if (c->pid)
        return;
    if (gone)
        group_gone(c);
    else if (!c->termed)
        terminate_group(c, ls_now() + c->grace); /* CMD ended: so does what it left */
}

static void sigchld_cb(evutil_socket_t fd, short what, void *arg) { reap(arg); }
static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
    command *c = arg;
    drain_watchdog(c);
    if (c->pgid && c->cause)
        reap(c); /* the SIGCHLD may already have been handled */
}

/* The environment: ours, with `extra` ("NAME=value" strings) replacing
 * variables of the same name. */
static char **make_env(char **extra, size_t nextra)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = malloc((n + nextra + 1) * sizeof *env);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bool replaced = false;
        for (size_t j = 0; j < nextra && !replaced; j++) {
            size_t len = strcspn(extra[j], "=") + 1;
            replaced = !strncmp(environ[i], extra[j], len);
        }
        if (!replaced)
            env[k++] = environ[i];
    }
    for (size_t j = 0; j < nextra; j++)
        env[k++] = extra[j];
    env[k] = NULL;
    return env;
}

static void __attribute__((noreturn))
child_exec(command *c, char **env, int go, int report, int go_parent, int report_parent)
{
    /* the parent's ends: held here, the go pipe would never end when the
     * parent closes it without a go byte, nor the report pipe for it */
    close(go_parent);
    close(report_parent);
    setpgid(0, 0);
    /* signals were blocked across the fork: leadership's handlers (which
     * write to its loop's signal pipe) go before any is let in */
    for (int s = 1; s < NSIG; s++)
        signal(s, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* wait until the watchdog guards the group */
    char byte;
    ssize_t n;
    while ((n = read(go, &byte, 1)) < 0 && errno == EINTR)
        ;
    if (n != 1)
        _exit(126);
    /* nothing of leadership's (store sockets, lock files) goes to CMD */
    if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) < 0) { /* Linux before 5.11 */
        for (long fd = 3, max = sysconf(_SC_OPEN_MAX); fd < max; fd++)
            fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    }
    execvpe(c->argv[0], c->argv, env);
    int e = errno;
    while (write(report, &e, sizeof e) < 0 && errno == EINTR)
        ;
    _exit(127);
}

/* Starts CMD; 0, or -1 with err. */
static int command_start(command *c, char **extra, size_t nextra, double term_at, double kill_at,
                         const char *term, char *err, size_t errlen)
{
    int go[2], report[2];
    if (pipe2(go, O_CLOEXEC) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    if (pipe2(report, O_CLOEXEC) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        close(go[0]);
        close(go[1]);
        return -1;
    }
    char **env = make_env(extra, nextra);
    fflush(NULL);
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();
    if (pid == 0)
        child_exec(c, env, go[0], report[1], go[1], report[0]);
    sigprocmask(SIG_SETMASK, &old, NULL);
    free(env);
    close(go[0]);
    close(report[1]);
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        close(go[1]);
        close(report[0]);
        return -1;
    }
    setpgid(pid, pid);
    c->pid = c->pgid = pid;
    c->cause = NULL;
    c->termed = false;
    c->kill_at = 0;
    bool guarded = ls_watchdog_arm(c->watchdog, pid, term_at, kill_at, c->eof_grace) == 0;
    if (guarded)
        while (write(go[1], "g", 1) < 0 && errno == EINTR)
            ;
    close(go[1]); /* without the go byte the child exits 126 */
    int child_errno = 0;
    ssize_t n;
    while ((n = read(report[0], &child_errno, sizeof child_errno)) < 0 && errno == EINTR)
        ;
    close(report[0]);
    if (!guarded || n == (ssize_t)sizeof child_errno) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        ls_watchdog_disarm(c->watchdog);
        c->pid = c->pgid = 0;
        if (!guarded)
            snprintf(err, errlen, "the watchdog process is gone: not starting '%s'", c->argv[0]);
        else
            snprintf(err, errlen, "cannot run '%s': %s", c->argv[0], strerror(child_errno));
        return -1;
    }
    if (!c->holding) {
        c->holding = true;
        ls_loop_hold();
    }
    char pgid[16];
    snprintf(pgid, sizeof pgid, "%d", (int)pid);
    ls_log_event(LS_INFO, "command started", "pgid", pgid, "command", c->argv[0],
                 term ? "term" : NULL, term, NULL);
    return 0;
}

/* ---- methods ---- */

/* cmd:start(env, term_at, kill_at) -> pid | nil, err
 * env: { NAME = value } added to ours (LEADERSHIP_TERM is also logged);
 * the watchdog is armed with the times (monotonic) before CMD runs.
 *   [-0, +(1|2), e] */
static int command_start_method(lua_State *L)
{
    command *c = check_command(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    double term_at = luaL_checknumber(L, 3), kill_at = luaL_checknumber(L, 4);
    luaL_argcheck(L, kill_at >= term_at, 4, "kill_at before term_at");
    if (!c->argv)
        return luaL_error(L, "command is closed");
    if (c->pgid)
        return luaL_error(L, "command is still running (pid %d)", (int)c->pgid);
    if (!c->watchdog) {
        lua_pushnil(L);
        lua_pushstring(L, "the watchdog process is gone: the command cannot be guarded");
        return 2;
    }
    /* "NAME=value" strings, kept alive on the stack until fork is done */
    size_t nextra = 0;
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        luaL_argcheck(L, lua_type(L, -2) == LUA_TSTRING && lua_isstring(L, -1), 2,
                      "env: names and values must be strings");
        lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
        lua_insert(L, -3);
        lua_pop(L, 1);
        nextra++;
    }
    char **extra = malloc((nextra + 1) * sizeof *extra);
    for (size_t i = 0; i < nextra; i++)
        extra[i] = (char *)lua_tostring(L, 5 + (int)i);
    /* the term, if given, is worth a field in the log line */
    lua_getfield(L, 2, "LEADERSHIP_TERM");
    const char *term = lua_tostring(L, -1);
    char err[300];
    int r = command_start(c, extra, nextra, term_at, kill_at, term, err, sizeof err);
    free(extra);
    if (r < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushinteger(L, c->pid);
    return 1;
}

/* cmd:guard(term_at, kill_at): the watchdog's new times, after a renewal.
 * true, or false if nothing runs or the watchdog is gone.   [-0, +1, e] */
static int command_guard(lua_State *L)
{
    command *c = check_command(L, 1);
    double term_at = luaL_checknumber(L, 2), kill_at = luaL_checknumber(L, 3);
    luaL_argcheck(L, kill_at >= term_at, 3, "kill_at before term_at");
    lua_pushboolean(L,
                    c->pgid && c->watchdog &&
                        ls_watchdog_arm(c->watchdog, c->pgid, term_at, kill_at, c->eof_grace) == 0);
    return 1;
}

/* cmd:terminate(kill_at): SIGTERM to the group now, SIGKILL at kill_at
 * (monotonic) unless it is gone by then. on_exit's cause is then
 * "terminated", unless CMD had ended by itself.   [-0, +0, e] */
static int command_terminate(lua_State *L)
{
    command *c = check_command(L, 1);
    double kill_at = luaL_checknumber(L, 2);
    if (!c->pgid)
        return 0;
    if (c->pid && !c->cause)
        c->cause = "terminated";
    terminate_group(c, kill_at);
    return 0;
}

/* cmd:running() -> true while any process of the group lives   [-0, +1, -] */
static int command_running(lua_State *L)
{
    lua_pushboolean(L, check_command(L, 1)->pgid != 0);
    return 1;
}

/* cmd:pid() -> pid (= pgid) of CMD while it runs | nil   [-0, +1, -] */
static int command_pid(lua_State *L)
{
    command *c = check_command(L, 1);
    if (c->pid)
        lua_pushinteger(L, c->pid);
    else
        lua_pushnil(L);
    return 1;
}

/* Idempotent; __gc, __close and close() end here. The watchdog is told
 * to go: a group still running is killed by it.   [-0, +0, -] */
static int command_close(lua_State *L)
{
    command *c = check_command(L, 1);
    if (!c->argv)
        return 0;
    if (c->watchdog) {
        event_del(c->watchdog_ev);
        ls_watchdog_close(c->watchdog);
        c->watchdog = NULL;
    }
    event_free(c->sigchld);
    event_free(c->watchdog_ev);
    event_free(c->kill_timer);
    if (c->holding) {
        c->holding = false;
        ls_loop_release();
    }
    for (char **a = c->argv; *a; a++)
        free(*a);
    free(c->argv);
    c->argv = NULL;
    c->pid = c->pgid = 0;
    luaL_unref(L, LUA_REGISTRYINDEX, c->self_ref);
    c->self_ref = LUA_NOREF;
    return 0;
}

/* __newindex: on_exit and on_error must be functions; a misspelt on_* is
 * an error.   [-0, +0, e] */
static int command_newindex(lua_State *L)
{
    check_command(L, 1);
    if (lua_type(L, 2) == LUA_TSTRING && !strncmp(lua_tostring(L, 2), "on_", 3)) {
        luaL_checkoption(L, 2, NULL, handler_names);
        if (!lua_isnil(L, 3))
            luaL_checktype(L, 3, LUA_TFUNCTION);
    }
    lua_getiuservalue(L, 1, 1);
    lua_insert(L, 2);
    lua_rawset(L, 2);
    return 0;
}

static void command_metatable(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"start", command_start_method},
        {"guard", command_guard},
        {"terminate", command_terminate},
        {"running", command_running},
        {"pid", command_pid},
        {"close", command_close},
        {NULL, NULL},
    };
    if (!luaL_newmetatable(L, COMMAND_METATABLE))
        return;
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "methods");
    lua_pushcfunction(L, ls_lua_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, command_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, command_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, command_close);
    lua_setfield(L, -2, "__close");
}

int ls_lua_command_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer argc = luaL_len(L, 1);
    luaL_argcheck(L, argc > 0, 1, "the command is empty");
    for (lua_Integer i = 1; i <= argc; i++) {
        luaL_argcheck(L, lua_rawgeti(L, 1, i) == LUA_TSTRING, 1, "argv must be strings");
        lua_pop(L, 1);
    }
    double grace = 5, eof_grace = -1;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        if (lua_getfield(L, 2, "grace") != LUA_TNIL)
            grace = luaL_checknumber(L, -1);
        if (lua_getfield(L, 2, "eof_grace") != LUA_TNIL)
            eof_grace = luaL_checknumber(L, -1);
        lua_pop(L, 2);
    }
    luaL_argcheck(L, grace >= 0 && grace < 86400, 2, "grace must be 0 to 86400 seconds");
    if (eof_grace < 0)
        eof_grace = grace;
    /* the group's orphans come to us, to be reaped and counted */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
        ls_log(LS_WARN,
               "cannot become a child subreaper (%s): the group's orphans are "
               "killed but not awaited",
               strerror(errno));
    char err[300];
    ls_watchdog *watchdog = ls_watchdog_start(err, sizeof err);
    if (!watchdog) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    command *c = lua_newuserdatauv(L, sizeof *c, 1);
    memset(c, 0, sizeof *c);
    c->grace = grace;
    c->eof_grace = eof_grace;
    c->watchdog = watchdog;
    c->argv = calloc((size_t)argc + 1, sizeof *c->argv);
    for (lua_Integer i = 1; i <= argc; i++) {
        lua_rawgeti(L, 1, i);
        c->argv[i - 1] = strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    struct event_base *base = ls_loop_base();
    c->sigchld = evsignal_new(base, SIGCHLD, sigchld_cb, c);
    event_add(c->sigchld, NULL);
    c->watchdog_ev =
        event_new(base, ls_watchdog_fd(watchdog), EV_READ | EV_PERSIST, watchdog_cb, c);
    event_add(c->watchdog_ev, NULL);
    c->kill_timer = evtimer_new(base, kill_timer_cb, c);
    command_metatable(L);
    lua_setmetatable(L, -2);
    lua_newtable(L);
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, -1);
    c->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 1;
}
