/* The watchdog of `leadership exec`: a process forked from leadership, in a
 * process group of its own (never CMD's, never leadership's), that kills
 * CMD's process group when leadership cannot: when the local deadline
 * passes without a renewal (leadership paused or stuck), or when its
 * socket closes because leadership died. Being a separate pid, a SIGSTOP
 * or SIGKILL of leadership leaves it running.
 *
 * Fork it before any thread starts (a ZooKeeper store): the child only
 * logs, polls, reads and signals, but it is a copy of this process. */
#ifndef LEADERSHIP_WATCHDOG_H
#define LEADERSHIP_WATCHDOG_H

#include <stddef.h>
#include <sys/types.h>

typedef struct ls_watchdog ls_watchdog;

/* What the watchdog reports back: it signalled `pgid` with `signo`
 * because the deadline passed. */
typedef struct ls_watchdog_report {
    pid_t pgid;
    int signo;
} ls_watchdog_report;

/* Forks the watchdog. NULL with a message if it cannot. */
ls_watchdog *ls_watchdog_start(char *err, size_t errlen);

/* Guards process group `pgid`: SIGTERM at monotonic time term_at and
 * SIGKILL at kill_at, unless a later call moves them (each renewal does).
 * If leadership dies first: SIGTERM at once, SIGKILL eof_grace seconds
 * later, never later than kill_at. 0, or -1 if the watchdog is gone. */
int ls_watchdog_arm(ls_watchdog *w, pid_t pgid, double term_at, double kill_at, double eof_grace);

/* The group is gone (reaped): guard nothing, so a reused pgid is never
 * signalled. 0, or -1 if the watchdog is gone. */
int ls_watchdog_disarm(ls_watchdog *w);

/* The socket to watch for reports (readable: call ls_watchdog_read). */
int ls_watchdog_fd(const ls_watchdog *w);
pid_t ls_watchdog_pid(const ls_watchdog *w);

/* Reads one report without blocking: 1 (filled in), 0 (none pending), or
 * -1 (the watchdog is gone). */
int ls_watchdog_read(ls_watchdog *w, ls_watchdog_report *report);

/* Closes the socket and reaps the watchdog. A group still armed is then
 * killed by it (as if leadership had died), so close after the group is
 * gone, or to have it killed. */
void ls_watchdog_close(ls_watchdog *w);

#endif
