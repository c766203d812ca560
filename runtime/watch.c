#include "watch.h"

#include <errno.h>
#include <event2/event.h>
#include <lauxlib.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "lua_core.h"
#include "task.h"

/* The directory is watched, not the file: an editor that writes a new file
 * and renames it over the old one replaces the inode, and a watch on the
 * old inode would never fire again. */
enum {
    /* the file's content may be complete: (re)start the quiet period */
    TRIGGER_EVENTS = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE,
    /* a write still going on: only extends a quiet period already started,
     * so a slow writer gives one reload after its close, not one per write */
    WATCH_MASK = TRIGGER_EVENTS | IN_MODIFY | IN_ONLYDIR,
};

typedef struct file_watch {
    char *path;       /* as the caller gave it: fn's argument */
    const char *name; /* the file's name in its directory (inside path) */
    int fd;           /* an inotify instance of its own */
    struct event *readable;
    struct event *quiet; /* debounce: fn runs when it expires */
    struct timeval quiet_period;
    int fn_ref;
    struct file_watch *next;
} file_watch;

static file_watch *watches;
/* Registry key of the userdata whose __gc frees every watch when the Lua
 * state closes (the registry references die with it). */
static const char cleanup_key = 'w';

static void watch_free(lua_State *L, file_watch *w)
{
    event_free(w->readable);
    event_free(w->quiet);
    close(w->fd);
    if (L)
        luaL_unref(L, LUA_REGISTRYINDEX, w->fn_ref);
    free(w->path);
    free(w);
}

static void watch_quiet_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    file_watch *w = arg;
    lua_State *S = ls_lua_scratch();
    lua_rawgeti(S, LUA_REGISTRYINDEX, w->fn_ref);
    lua_pushstring(S, w->path);
    /* a task, not a call: it may sleep, and the budget hook guards it */
    ls_task_spawn(S, 1, NULL, NULL, NULL, 0, "watch_file handler");
}

static void watch_event(file_watch *w, const struct inotify_event *ev)
{
    if (ev->mask & IN_Q_OVERFLOW) {
        /* events were dropped: ours may have been among them */
        evtimer_add(w->quiet, &w->quiet_period);
        return;
    }
    if (ev->mask & IN_IGNORED) {
        ls_log(LS_WARN, "watch_file: the directory of '%s' is gone; no longer watching it",
               w->path);
        return;
    }
    if (ev->len == 0 || strcmp(ev->name, w->name) != 0)
        return;
    if (ev->mask & TRIGGER_EVENTS)
        evtimer_add(w->quiet, &w->quiet_period);
    else if ((ev->mask & IN_MODIFY) && evtimer_pending(w->quiet, NULL))
        evtimer_add(w->quiet, &w->quiet_period);
}

static void watch_readable_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    file_watch *w = arg;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            if (errno != EAGAIN)
                ls_log(LS_ERROR, "watch_file '%s': reading inotify: %s", w->path, strerror(errno));
            return;
        }
        if (n == 0)
            return;
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            watch_event(w, ev);
            p += sizeof *ev + ev->len;
        }
    }
}

static int cleanup_gc(lua_State *L)
{
    (void)L;
    while (watches) {
        file_watch *w = watches;
        watches = w->next;
        watch_free(NULL, w); /* the registry is going away with the state */
    }
    return 0;
}

static void ensure_cleanup(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &cleanup_key) != LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
    lua_newuserdatauv(L, 1, 0);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, cleanup_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &cleanup_key);
}

/* Unlinks and frees the watch of `path`, if any. */
static void unwatch(lua_State *L, const char *path, file_watch *keep)
{
    for (file_watch **p = &watches; *p; p = &(*p)->next) {
        if (*p != keep && strcmp((*p)->path, path) == 0) {
            file_watch *w = *p;
            *p = w->next;
            watch_free(L, w);
            return;
        }
    }
}

static void check_callable(lua_State *L, int index)
{
    if (lua_isfunction(L, index))
        return;
    bool callable = false;
    if (lua_getmetatable(L, index)) {
        callable = lua_getfield(L, -1, "__call") != LUA_TNIL;
        lua_pop(L, 2);
    }
    if (!callable)
        luaL_typeerror(L, index, "function, callable table or nil");
}

int ls_watch_file(lua_State *L)
{
    size_t len;
    const char *path = luaL_checklstring(L, 1, &len);
    luaL_argcheck(L, len > 0 && strlen(path) == len, 1, "path must be non-empty, without NUL");
    bool stop = lua_isnoneornil(L, 2);
    if (!stop)
        check_callable(L, 2);
    double quiet = luaL_optnumber(L, 3, 0.1);
    luaL_argcheck(L, quiet >= 0 && quiet < 3600, 3, "quiet period must be in [0, 3600) seconds");
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    luaL_argcheck(L, *name && strcmp(name, ".") && strcmp(name, ".."), 1,
                  "path must name a file, not a directory");
    if (stop) {
        unwatch(L, path, NULL);
        lua_pushboolean(L, 1);
        return 1;
    }

    /* the directory part, as inotify wants it */
    char *dir;
    if (!slash)
        dir = strdup(".");
    else if (slash == path)
        dir = strdup("/");
    else
        dir = strndup(path, (size_t)(slash - path));
    if (!dir)
        return luaL_error(L, "out of memory");
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0 || inotify_add_watch(fd, dir, WATCH_MASK) < 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        lua_pushnil(L);
        lua_pushfstring(L, "watch_file '%s': cannot watch directory '%s': %s", path, dir,
                        strerror(err));
        free(dir);
        return 2;
    }
    free(dir);

    ensure_cleanup(L);
    file_watch *w = calloc(1, sizeof *w);
    char *copy = strdup(path);
    if (!w || !copy) {
        free(w);
        free(copy);
        close(fd);
        return luaL_error(L, "out of memory");
    }
    w->path = copy;
    w->name = copy + (name - path);
    w->fd = fd;
    w->quiet_period.tv_sec = (time_t)quiet;
    w->quiet_period.tv_usec = (suseconds_t)((quiet - (double)(time_t)quiet) * 1e6);
    /* neither event holds the loop: watching alone keeps nothing running */
    w->readable = event_new(ls_loop_base(), fd, EV_READ | EV_PERSIST, watch_readable_cb, w);
    w->quiet = evtimer_new(ls_loop_base(), watch_quiet_cb, w);
    event_add(w->readable, NULL);
    lua_pushvalue(L, 2);
    w->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    w->next = watches;
    watches = w;
    /* replaced only once the new watch works */
    unwatch(L, path, w);
    lua_pushboolean(L, 1);
    return 1;
}
