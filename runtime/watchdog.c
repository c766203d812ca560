#define _GNU_SOURCE
#include "watchdog.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"

/* One message each way; SOCK_SEQPACKET keeps them whole. */
enum { MSG_ARM = 1, MSG_DISARM = 2, MSG_SIGNALLED = 3 };

typedef struct watchdog_msg {
    int32_t op;
    int32_t pgid;
    int32_t signo;  /* MSG_SIGNALLED */
    double term_at; /* MSG_ARM: monotonic seconds */
    double kill_at;
    double eof_grace; /* seconds */
} watchdog_msg;

struct ls_watchdog {
    int fd; /* leadership's end of the socket pair */
    pid_t pid;
};

/* ---- the watchdog process ---- */

/* While leadership is gone, how often to look whether the group is too. */
#define EOF_POLL_MS 50

typedef struct guard {
    bool armed, termed;
    pid_t pgid;
    double term_at, kill_at, eof_grace;
} guard;

static void signal_group(guard *g, int signo, const char *why, int fd)
{
    /* tell leadership first, so the report is there when it reaps */
    if (fd >= 0) {
        watchdog_msg m = {.op = MSG_SIGNALLED, .pgid = g->pgid, .signo = signo};
        send(fd, &m, sizeof m, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    kill(-g->pgid, signo);
    if (signo != SIGKILL)
        kill(-g->pgid, SIGCONT); /* a stopped group would never see SIGTERM */
    /* the log last: a write to a stalled log pipe must not hold the kill */
    char pgid[16];
    snprintf(pgid, sizeof pgid, "%d", (int)g->pgid);
    ls_log_event(signo == SIGKILL ? LS_ERROR : LS_WARN,
                 signo == SIGKILL ? "watchdog: SIGKILL to command" : "watchdog: SIGTERM to command",
                 "pgid", pgid, "why", why, NULL);
}

/* Its own stderr, not blocking, when that is a pipe or a terminal: a log
 * reader that stalls must not hold the watchdog between its SIGTERM and
 * its SIGKILL. Reopening gives an open file of its own (O_NONBLOCK set on
 * the inherited one would be leadership's too). A file does not block; a
 * socket (the journal's) cannot be reopened, and stays as it is. */
static void stderr_nonblocking(void)
{
    struct stat st;
    if (fstat(2, &st) < 0 || !(S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode)))
        return;
    int fd = open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return;
    dup2(fd, 2);
    close(fd);
}

static int ms_until(double when)
{
    double ms = ceil((when - ls_now()) * 1000);
    return ms <= 0 ? 0 : ms > 60000 ? 60000 : (int)ms;
}

static void watchdog_apply(guard *g, const watchdog_msg *m)
{
    if (m->op == MSG_DISARM) {
        g->armed = false;
    } else if (m->op == MSG_ARM) {
        if (!g->armed || g->pgid != m->pgid) {
            *g = (guard){true, false, m->pgid, m->term_at, m->kill_at, m->eof_grace};
        } else if (!g->termed) {
            g->term_at = m->term_at;
            g->kill_at = m->kill_at;
            g->eof_grace = m->eof_grace;
        }
        /* once it had its SIGTERM, a late renewal changes nothing */
    }
}

static void __attribute__((noreturn)) watchdog_main(int fd)
{
    /* forget the parent's handlers (libevent's write to closed sockets) */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < NSIG; s++)
        signal(s, SIG_DFL);
    /* it ends when leadership ends, after dealing with the group: the
     * signals a terminal or a service manager sends around are not for it */
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGTSTP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    /* in a group of its own it is in the background: a terminal with
     * `stty tostop` would stop it at its first log line */
    signal(SIGTTOU, SIG_IGN);
    setpgid(0, 0);
    prctl(PR_SET_NAME, "leadership-wd");
    /* the socket to 3 first: with stdin, stdout or stderr closed in
     * leadership, it may be 0, 1 or 2, which /dev/null replaces below */
    int socket_was = fd;
    if (fd != 3) {
        dup2(fd, 3);
        fd = 3;
    }
    /* hold nothing of leadership's: no store socket, no lock file (a file://
     * holder's flock must go when leadership dies), no stdout pipe */
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
        dup2(devnull, 0);
        dup2(devnull, 1);
        if (socket_was == 2)
            dup2(devnull, 2);
    }
    close_range(4, ~0U, 0);
    stderr_nonblocking();

    guard g = {0};
    bool eof = false;
    for (;;) {
        double now = ls_now();
        if (g.armed && !g.termed && (eof || now >= g.term_at)) {
            g.termed = true;
            if (now < g.kill_at)
                signal_group(&g, SIGTERM, eof ? "leadership died" : "deadline passed",
                             eof ? -1 : fd);
        }
        if (g.armed && g.termed && now >= g.kill_at) {
            signal_group(&g, SIGKILL, eof ? "leadership died" : "deadline passed", eof ? -1 : fd);
            g.armed = false;
        }
        if (eof) {
            if (!g.armed || (kill(-g.pgid, 0) < 0 && errno == ESRCH))
                _exit(0);
            int ms = ms_until(g.kill_at);
            poll(NULL, 0, ms < EOF_POLL_MS ? ms : EOF_POLL_MS);
            continue;
        }
        struct pollfd p = {fd, POLLIN, 0};
        int timeout = g.armed ? ms_until(g.termed ? g.kill_at : g.term_at) : -1;
        if (poll(&p, 1, timeout) <= 0)
            continue;
        watchdog_msg m;
        ssize_t n = recv(fd, &m, sizeof m, 0);
        if (n == (ssize_t)sizeof m) {
            watchdog_apply(&g, &m);
        } else if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
            eof = true;
            if (g.armed)
                g.kill_at = fmin(g.kill_at, ls_now() + g.eof_grace);
        }
    }
}

/* ---- leadership's side ---- */

ls_watchdog *ls_watchdog_start(char *err, size_t errlen)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        snprintf(err, errlen, "watchdog: socketpair: %s", strerror(errno));
        return NULL;
    }
    fflush(NULL); /* buffered output must not be written twice */
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "watchdog: fork: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return NULL;
    }
    if (pid == 0) {
        close(sv[0]);
        watchdog_main(sv[1]);
    }
    close(sv[1]);
    /* set here too, so it holds whichever process runs first */
    setpgid(pid, pid);
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    ls_watchdog *w = malloc(sizeof *w);
    w->fd = sv[0];
    w->pid = pid;
    char pid_text[16];
    snprintf(pid_text, sizeof pid_text, "%d", (int)pid);
    ls_log_event(LS_DEBUG, "watchdog started", "pid", pid_text, NULL);
    return w;
}

static int watchdog_send(ls_watchdog *w, const watchdog_msg *m)
{
    if (w->fd < 0)
        return -1;
    /* a few bytes into an idle socket: it never fills, but never block */
    return send(w->fd, m, sizeof m[0], MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)sizeof m[0] ? 0
                                                                                            : -1;
}

int ls_watchdog_arm(ls_watchdog *w, pid_t pgid, double term_at, double kill_at, double eof_grace)
{
    watchdog_msg m = {.op = MSG_ARM,
                      .pgid = pgid,
                      .term_at = term_at,
                      .kill_at = kill_at,
                      .eof_grace = eof_grace};
    return watchdog_send(w, &m);
}

int ls_watchdog_disarm(ls_watchdog *w)
{
    watchdog_msg m = {.op = MSG_DISARM};
    return watchdog_send(w, &m);
}

int ls_watchdog_fd(const ls_watchdog *w) { return w->fd; }
pid_t ls_watchdog_pid(const ls_watchdog *w) { return w->pid; }

int ls_watchdog_read(ls_watchdog *w, ls_watchdog_report *report)
{
    if (w->fd < 0)
        return -1;
    watchdog_msg m;
    ssize_t n = recv(w->fd, &m, sizeof m, MSG_DONTWAIT);
    if (n == (ssize_t)sizeof m && m.op == MSG_SIGNALLED) {
        report->pgid = m.pgid;
        report->signo = m.signo;
        return 1;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    return n == 0 || n < 0 ? -1 : 0;
}

void ls_watchdog_close(ls_watchdog *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    /* disarmed, it exits at once; with a group to kill it may take its
     * grace, and then it is left to finish on its own */
    for (int i = 0; i < 100; i++) {
        pid_t r = waitpid(w->pid, NULL, WNOHANG);
        if (r == w->pid || (r < 0 && errno != EINTR))
            break;
        poll(NULL, 0, 10);
    }
    free(w);
}
