/* file:///dir — elections among processes on one host, with no server.
 *
 * Leadership is a lease, as on every other store. Per key, <dir>/<name>.lease
 * holds one JSON record: holder id, value, term, expiry (CLOCK_MONOTONIC ns,
 * host-wide on Linux) and the boot id (a record from before a reboot is
 * void). The record is never edited in place, only replaced by rename, so a
 * reader never sees half of one; it is never deleted either (a release
 * clears the holder and keeps the term), so the term only grows.
 *
 * A lease is valid while it names a holder, has not expired, was written in
 * this boot and its holder is alive. Each store object is one holder: it
 * creates <dir>/holders/<id> and holds an exclusive flock on it for its
 * life. A record whose holder file can be locked is a dead holder's, so a
 * crash frees the key at once, while a holder that lives but stops renewing
 * (SIGSTOP, a hang) loses it at expiry: the kernel lock alone is not enough.
 *
 * Nobody polls. inotify on <dir> reports record replacements (IN_MOVED_TO)
 * and on <dir>/holders a holder's last close (IN_CLOSE_WRITE, also when the
 * kernel closes a killed process's files); checkers open holder files
 * read-only, so their own closes raise nothing. The kernel raises that
 * event just before it drops the dead process's lock, so a holder that
 * still looks alive right after it is checked again, a few times over half
 * a second. A timer at the current lease's expiry covers a hung holder.
 *
 * Writers (acquire, renew, release) take <name>.mutex with a non-blocking
 * flock and retry on a short timer, never blocking the loop: the process
 * holding it may be stopped. Readers need no lock.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../runtime/log.h"
#include "store.h"

/* Encoded key names longer than this are refused: "<name>.lease" and the
 * temp name ".tmp-<holder id>-<name>.lease" must fit in NAME_MAX (255). */
#define KEY_NAME_MAX 200
#define HOLDER_ID_MAX 48
#define MUTEX_RETRY 0.002     /* seconds between tries of a busy key mutex */
#define MUTEX_RETRY_SLOW 0.02 /* ... once it has been busy for a while */
#define MUTEX_STALL_REPORT 1  /* seconds busy before on_error hears of it */
/* A holder that released a key (resign) lets it lie this long before it
 * takes it again, so the other candidates hear of the vacancy first. */
#define RESIGN_GRACE_NS 100000000LL
/* After a holder file's close event: first re-check, doubling up to the last. */
#define CLOSE_RECHECK_FIRST 0.001
#define CLOSE_RECHECK_LAST 0.256
/* Holder files whose close a store remembers, for records it reads later */
#define CLOSED_HOLDERS 8
#define MUTEX_BUSY (-2)
/* IN_CLOSE_WRITE on the directory: a record edited in place by hand.
 * IN_MOVE_SELF (and IN_IGNORED, always sent): a directory gone from its
 * path, its watch with it; IN_DELETE/IN_MOVED_FROM of our own holder file:
 * other stores now count us dead. Either way the store starts again. */
#define DIR_EVENTS (IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE | IN_MOVE_SELF | IN_ONLYDIR)
#define HOLDERS_EVENTS (IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM | IN_MOVE_SELF | IN_ONLYDIR)

typedef struct file_store file_store;
typedef struct file_entry file_entry;
typedef struct file_release file_release;

/* The files of one key. */
typedef struct file_key {
    char *name; /* the key, percent-encoded */
    char *lease_path, *mutex_path, *term_path;
} file_key;

struct file_store {
    char *dir;
    char *holders_dir;
    char holder_id[HOLDER_ID_MAX]; /* names this store in records */
    char *holder_path;
    int holder_fd; /* LOCK_EX on holder_path while this store lives */
    char boot_id[64];
    int inotify_fd;
    int wd_dir, wd_holders;
    struct event *inotify_ev;
    struct event *renew; /* one timer renews every key this store holds */
    /* the last holder files seen to close: an entry that first sees one of
     * these holders after its close event must check it again too */
    char closed_holders[CLOSED_HOLDERS][HOLDER_ID_MAX];
    unsigned closed_next;
    file_entry *entries;
    file_release *releases;
    unsigned depth; /* our callbacks on the stack: free is deferred */
    bool closed;
    /* a watched directory or our holder file left its path: every entry
     * failed, and the next start makes them again (store_repair) */
    bool broken;
};

struct file_entry {
    file_store *fs;
    ls_election *e; /* NULL once cancelled */
    file_key key;
    const char *value; /* the election's (it outlives the entry's link) */
    size_t value_len;
    double ttl;
    double renew_period; /* ls_renew_period() of the election */
    bool candidate;
    bool holding;
    bool dirty; /* an inotify event asked for a re-read */
    bool garbage_reported;
    bool stall_reported;
    uint64_t term;                   /* ours, while holding */
    long long expiry_ns;             /* of the lease we last wrote, while holding */
    double renew_at;                 /* monotonic seconds, while holding */
    double busy_since;               /* when the key mutex was first found busy, or 0 */
    char seen_holder[HOLDER_ID_MAX]; /* holder of the last valid lease read */
    double close_recheck;            /* seconds to the next re-check of it, or 0 */
    struct event *wake;              /* at the seen lease's expiry, or a mutex retry */
    unsigned refs;                   /* the election's link + reports in flight */
    file_entry *next;
};

/* A release that found the key mutex busy and keeps trying. */
struct file_release {
    file_store *fs;
    file_key key;
    uint64_t term;
    long long expiry_ns; /* of our lease: nothing is left to release after it */
    double started;      /* when the mutex was first found busy */
    struct event *timer;
    file_release *next;
};

typedef struct lease_record {
    bool exists;  /* the file was there */
    bool garbage; /* it was, but is no lease record; `why` says how */
    char why[160];
    json_t *root;
    const char *holder; /* NULL: released */
    const char *boot;
    const char *released_by; /* the holder that released it, if known */
    long long released_at_ns;
    const char *value;
    size_t value_len;
    uint64_t term;
    long long expiry_ns;
} lease_record;

/* ---- small helpers ---- */

static long long mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void arm(struct event *ev, double seconds)
{
    if (seconds < 0)
        seconds = 0;
    struct timeval tv = {(time_t)seconds, (suseconds_t)((seconds - (time_t)seconds) * 1e6)};
    evtimer_add(ev, &tv);
}

static char *join(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
    char *s = malloc(n);
    snprintf(s, n, "%s%s%s", a, b, c);
    return s;
}

/* Every byte outside [A-Za-z0-9_-] becomes %XX, '%' included, so the map
 * is one-to-one and no name is "", ".", ".." or holds a '/'. */
static char *key_encode(const char *key)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out = malloc(strlen(key) * 3 + 1), *o = out;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '_' || *p == '-') {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = '\0';
    return out;
}

static int key_init(file_store *fs, const char *key, file_key *k, char *err, size_t errlen)
{
    if (!key[0]) {
        snprintf(err, errlen, "file store: the key must not be empty");
        return -1;
    }
    char *name = key_encode(key);
    if (strlen(name) > KEY_NAME_MAX) {
        snprintf(err, errlen,
                 "file store: key '%.60s...' is too long: its file name would be %zu bytes "
                 "(at most %d)",
                 key, strlen(name), KEY_NAME_MAX);
        free(name);
        return -1;
    }
    char *base = join(fs->dir, "/", name);
    k->name = name;
    k->lease_path = join(base, ".lease", "");
    k->mutex_path = join(base, ".mutex", "");
    k->term_path = join(base, ".term", "");
    free(base);
    return 0;
}

static void key_copy(file_key *to, const file_key *from)
{
    to->name = strdup(from->name);
    to->lease_path = strdup(from->lease_path);
    to->mutex_path = strdup(from->mutex_path);
    to->term_path = strdup(from->term_path);
}

static void key_free(file_key *k)
{
    free(k->name);
    free(k->lease_path);
    free(k->mutex_path);
    free(k->term_path);
}

/* Holder ids come from files anyone may write: only these characters can
 * be joined to the holders directory without escaping it. */
static bool holder_id_valid(const char *id)
{
    size_t n = strlen(id);
    return n > 0 && n < HOLDER_ID_MAX &&
           strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == n;
}

/* ---- files ---- */

/* Takes the key's mutex without blocking: the locked fd (close unlocks),
 * MUTEX_BUSY, or -1 with err. Opened read-only so closing it raises no
 * IN_CLOSE_WRITE in the watched directory. Every file here is opened with
 * O_NONBLOCK (no effect on a regular file): anyone who can write the
 * directory can leave a FIFO in a file's place, and opening one blocks the
 * loop until a writer comes. */
static int mutex_take(const file_key *k, char *err, size_t errlen)
{
    int fd = open(k->mutex_path, O_RDONLY | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "file store: cannot open '%s': %s", k->mutex_path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
        /* An age-based cleaner (systemd-tmpfiles: /tmp files over 10 days)
         * unlinking a mutex someone holds lets the next process lock a new
         * file beside it: times new on every take keep a used key's mutex
         * young. (IN_ATTRIB is not watched: this wakes nobody.) */
        futimens(fd, NULL);
        return fd;
    }
    int saved = errno;
    close(fd);
    if (saved == EWOULDBLOCK)
        return MUTEX_BUSY;
    snprintf(err, errlen, "file store: cannot lock '%s': %s", k->mutex_path, strerror(saved));
    return -1;
}

/* Syncs a directory's entries (a rename in it). A file system that cannot
 * sync a directory (EINVAL) has nothing to sync. */
static int dir_sync(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd) < 0 && errno != EINVAL ? -1 : 0;
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

/* Replaces `path` with doc: a temp file in the same directory renamed over
 * it, so readers see the old record or the new one, never a mix. Durable
 * (the file, then the directory, synced) for terms, which must never go
 * back, not even after a power loss; leases are not: one does not outlive a
 * reboot (the boot id voids it), and every renewal writes one. */
static int write_atomic(file_store *fs, const char *path, json_t *doc, bool durable, char *err,
                        size_t errlen)
{
    char prefix[HOLDER_ID_MAX + 8];
    snprintf(prefix, sizeof prefix, "/.tmp-%s-", fs->holder_id);
    char *tmp = join(fs->dir, prefix, strrchr(path, '/') + 1);
    /* the name is ours alone: whatever is there (a crash's leftover, or a
     * FIFO or link someone left) goes, and a new file is made */
    unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "file store: cannot write '%s': %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    /* one write: json_dumpfd writes each token with its own system call */
    char *text = json_dumps(doc, JSON_COMPACT | JSON_ENCODE_ANY);
    int rc = text ? 0 : -1;
    int saved = text ? 0 : ENOMEM;
    for (size_t done = 0, len = text ? strlen(text) : 0; rc == 0 && done < len;) {
        ssize_t n = write(fd, text + done, len - done);
        if (n < 0 && errno != EINTR) {
            rc = -1;
            saved = errno;
        } else if (n > 0) {
            done += (size_t)n;
        }
    }
    free(text);
    if (durable && rc == 0 && fsync(fd) < 0) {
        rc = -1;
        saved = errno;
    }
    if (close(fd) < 0 && rc == 0) {
        rc = -1;
        saved = errno;
    }
    if (rc == 0 && rename(tmp, path) < 0) {
        rc = -1;
        saved = errno;
    }
    if (durable && rc == 0 && dir_sync(fs->dir) < 0) {
        /* the rename is done: the file holds the term, which may yet be lost */
        snprintf(err, errlen, "file store: cannot sync '%s': %s", fs->dir, strerror(errno));
        free(tmp);
        return -1;
    }
    if (rc < 0) {
        unlink(tmp);
        snprintf(err, errlen, "file store: cannot write '%s': %s", path, strerror(saved));
    }
    free(tmp);
    return rc < 0 ? -1 : 0;
}

static void record_free(lease_record *r)
{
    json_decref(r->root);
    memset(r, 0, sizeof *r);
}

static bool record_garbage(lease_record *r, const char *why)
{
    r->garbage = true;
    snprintf(r->why, sizeof r->why, "%s", why);
    return false;
}

/* Checks the shape of a parsed record; false (garbage) if it is wrong. */
static bool record_parse(lease_record *r)
{
    json_t *root = r->root;
    if (!json_is_object(root))
        return record_garbage(r, "not a JSON object");
    json_t *term = json_object_get(root, "term");
    if (!json_is_integer(term) || json_integer_value(term) < 0)
        return record_garbage(r, "'term' is not a non-negative integer");
    r->term = (uint64_t)json_integer_value(term);
    json_t *holder = json_object_get(root, "holder");
    if (json_is_null(holder)) {
        json_t *by = json_object_get(root, "released_by");
        json_t *at = json_object_get(root, "released_at");
        json_t *boot = json_object_get(root, "boot");
        if (json_is_string(by) && json_is_integer(at) && json_is_string(boot)) {
            r->released_by = json_string_value(by);
            r->released_at_ns = json_integer_value(at);
            r->boot = json_string_value(boot);
        }
        return true;
    }
    if (!json_is_string(holder) || !holder_id_valid(json_string_value(holder)))
        return record_garbage(r, "'holder' is neither null nor a holder id");
    r->holder = json_string_value(holder);
    json_t *boot = json_object_get(root, "boot");
    json_t *expiry = json_object_get(root, "expiry");
    if (!json_is_string(boot) || !json_is_integer(expiry))
        return record_garbage(r, "'boot' or 'expiry' is missing or of the wrong type");
    r->boot = json_string_value(boot);
    r->expiry_ns = json_integer_value(expiry);
    json_t *value = json_object_get(root, "value");
    if (!json_is_string(value))
        return record_garbage(r, "'value' is missing or not a string");
    r->value = json_string_value(value);
    r->value_len = json_string_length(value);
    return true;
}

/* Reads a whole record or term file, then parses it (jansson's json_loadfd
 * reads one byte per system call). Records hold the candidate's value, so
 * the buffer grows to what the file holds, up to RECORD_MAX. */
#define RECORD_MAX (64 << 20)
static json_t *json_read_fd(int fd, size_t flags, json_error_t *jerr)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            snprintf(jerr->text, sizeof jerr->text, "out of memory reading it");
            return NULL;
        }
        if (len == cap) {
            if (len > RECORD_MAX) {
                snprintf(jerr->text, sizeof jerr->text, "larger than %d bytes", RECORD_MAX);
                free(buf);
                return NULL;
            }
            /* one byte past the limit tells a file of RECORD_MAX from a larger one */
            cap = cap * 2 > RECORD_MAX ? RECORD_MAX + 1 : cap * 2;
            char *grown = realloc(buf, cap);
            if (!grown)
                free(buf);
            buf = grown;
            continue;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n == 0)
            break;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(jerr->text, sizeof jerr->text, "read: %s", strerror(errno));
            free(buf);
            return NULL;
        }
        len += (size_t)n;
    }
    json_t *doc = json_loadb(buf, len, flags, jerr);
    free(buf);
    return doc;
}

/* Reads k's record. 0 (r->exists false if there is none, r->garbage if it
 * is no record), or -1 with err if the file cannot be read. */
static int record_read(const file_key *k, lease_record *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    int fd = open(k->lease_path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, errlen, "file store: cannot read '%s': %s", k->lease_path, strerror(errno));
        return -1;
    }
    r->exists = true;
    json_error_t jerr;
    r->root = json_read_fd(fd, JSON_ALLOW_NUL, &jerr);
    close(fd);
    if (!r->root) {
        char why[160];
        snprintf(why, sizeof why, "bad JSON: %.140s", jerr.text);
        record_garbage(r, why);
        return 0;
    }
    record_parse(r);
    return 0;
}

/* The highest term k's term file has seen; 0 if it has none. -1 with err if
 * it is garbage (the caller goes on with 0 after reporting). */
static int term_read(const file_key *k, uint64_t *term, char *err, size_t errlen)
{
    *term = 0;
    int fd = open(k->term_path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 && errno == ENOENT)
        return 0;
    json_error_t jerr;
    json_t *doc = fd < 0 ? NULL : json_read_fd(fd, 0, &jerr);
    if (fd >= 0)
        close(fd);
    if (!doc) {
        snprintf(err, errlen, "file store: cannot use term file '%s' (%s); ignoring it",
                 k->term_path, fd < 0 ? strerror(errno) : jerr.text);
        return -1;
    }
    json_t *t = json_object_get(doc, "term");
    int rc = 0;
    if (json_is_integer(t) && json_integer_value(t) >= 0) {
        *term = (uint64_t)json_integer_value(t);
    } else {
        snprintf(err, errlen, "file store: '%s' holds no non-negative 'term'; ignoring it",
                 k->term_path);
        rc = -1;
    }
    json_decref(doc);
    return rc;
}

static int term_write(file_store *fs, const file_key *k, uint64_t term, char *err, size_t errlen)
{
    json_t *doc = json_pack("{sI}", "term", (json_int_t)term);
    int rc = write_atomic(fs, k->term_path, doc, true, err, errlen);
    json_decref(doc);
    return rc;
}

/* Writes k's record: held by us until expiry_ns (value non-NULL), or
 * released by us (value NULL), keeping `term` either way. */
static int record_write(file_store *fs, const file_key *k, const char *value, size_t len,
                        uint64_t term, long long expiry_ns, char *err, size_t errlen)
{
    json_t *doc = json_object();
    json_object_set_new(doc, "holder", value ? json_string(fs->holder_id) : json_null());
    json_object_set_new(doc, "term", json_integer((json_int_t)term));
    json_object_set_new(doc, "boot", json_string(fs->boot_id));
    if (value) {
        /* JSON strings are UTF-8; the Lua module allows no other values */
        json_t *v = json_stringn(value, len);
        if (!v) {
            json_decref(doc);
            snprintf(err, errlen, "file store: the value for '%s' is not UTF-8 text",
                     k->lease_path);
            return -1;
        }
        json_object_set_new(doc, "value", v);
        json_object_set_new(doc, "expiry", json_integer(expiry_ns));
    } else {
        json_object_set_new(doc, "released_by", json_string(fs->holder_id));
        json_object_set_new(doc, "released_at", json_integer(mono_ns()));
    }
    int rc = write_atomic(fs, k->lease_path, doc, false, err, errlen);
    json_decref(doc);
    return rc;
}

/* ---- liveness and validity ---- */

/* True unless holder `id` is provably gone: its file is missing, or nobody
 * holds its lock. A file we cannot check counts as alive (the lease expiry
 * still bounds it). A dead holder's file is removed: ids are never reused,
 * so nobody can be about to lock it. */
static bool holder_alive(file_store *fs, const char *id)
{
    if (!strcmp(id, fs->holder_id))
        return true;
    char *path = join(fs->holders_dir, "/", id);
    /* read-only: our close must not look like a holder's death */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    bool alive = fd < 0 ? errno != ENOENT : flock(fd, LOCK_SH | LOCK_NB) < 0;
    if (fd >= 0)
        close(fd);
    if (!alive)
        unlink(path);
    free(path);
    return alive;
}

static bool lease_valid(file_store *fs, const lease_record *r, long long now)
{
    return r->exists && !r->garbage && r->holder && r->expiry_ns > now &&
           !strcmp(r->boot, fs->boot_id) && holder_alive(fs, r->holder);
}

/* The record names this store as holder with `term` (expired or not). */
static bool record_is_ours(file_store *fs, const lease_record *r, uint64_t term)
{
    return r->exists && !r->garbage && r->holder && !strcmp(r->holder, fs->holder_id) &&
           r->term == term && !strcmp(r->boot, fs->boot_id);
}

/* ---- releases ---- */

/* Clears the holder of k's record if it is still ours with `term`; the
 * term stays. 0 done (or nothing to do), MUTEX_BUSY, -1 with err. */
static int lease_release(file_store *fs, const file_key *k, uint64_t term, char *err, size_t errlen)
{
    int lock = mutex_take(k, err, errlen);
    if (lock < 0)
        return lock;
    lease_record r;
    int rc = record_read(k, &r, err, errlen);
    if (rc == 0 && record_is_ours(fs, &r, term))
        rc = record_write(fs, k, NULL, 0, term, 0, err, errlen);
    record_free(&r);
    close(lock);
    return rc;
}

static void release_free(file_release *rel)
{
    for (file_release **p = &rel->fs->releases; *p; p = &(*p)->next) {
        if (*p == rel) {
            *p = rel->next;
            break;
        }
    }
    event_free(rel->timer);
    key_free(&rel->key);
    free(rel);
    ls_loop_release();
}

/* When to try a busy key mutex again: soon at first, slowly once it has
 * stayed locked for a while (a stopped process holding it). */
static double mutex_retry_after(double busy_for)
{
    return busy_for < 0.1 ? MUTEX_RETRY : MUTEX_RETRY_SLOW;
}

static void release_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    file_release *rel = arg;
    char err[600];
    int rc = lease_release(rel->fs, &rel->key, rel->term, err, sizeof err);
    if (rc == MUTEX_BUSY && mono_ns() < rel->expiry_ns) {
        arm(rel->timer, mutex_retry_after(ls_now() - rel->started));
        return;
    }
    if (rc == MUTEX_BUSY)
        ls_log(LS_WARN,
               "file store: could not release '%s' (its mutex stayed locked); the lease "
               "expires by itself",
               rel->key.lease_path);
    else if (rc < 0)
        ls_log(LS_WARN, "%s; the lease expires by itself", err);
    release_free(rel);
}

/* Releases at once if it can, else keeps trying (holding the loop) until
 * the lease we wrote, which expires at expiry_ns, would have expired anyway. */
static void release_start(file_store *fs, const file_key *k, uint64_t term, long long expiry_ns)
{
    if (mono_ns() >= expiry_ns)
        return; /* expired: anyone may take the key already */
    char err[600];
    int rc = lease_release(fs, k, term, err, sizeof err);
    if (rc == MUTEX_BUSY) {
        file_release *rel = calloc(1, sizeof *rel);
        rel->fs = fs;
        key_copy(&rel->key, k);
        rel->term = term;
        rel->expiry_ns = expiry_ns;
        rel->started = ls_now();
        rel->timer = evtimer_new(ls_loop_base(), release_retry_cb, rel);
        rel->next = fs->releases;
        fs->releases = rel;
        ls_loop_hold();
        arm(rel->timer, MUTEX_RETRY);
    } else if (rc < 0) {
        ls_log(LS_WARN, "%s; the lease expires by itself", err);
    }
}

/* ---- entries: one per campaigning or following election ---- */

static void store_free(file_store *fs);

static void store_enter(file_store *fs) { fs->depth++; }

static void store_leave(file_store *fs)
{
    if (--fs->depth == 0 && fs->closed)
        store_free(fs);
}

static void entry_hold(file_entry *en) { en->refs++; }

/* Drops a reference; false if the entry was cancelled (so the caller must
 * not touch its election any more). */
static bool entry_drop(file_entry *en)
{
    bool live = en->e != NULL;
    if (--en->refs == 0) {
        event_free(en->wake);
        key_free(&en->key);
        free(en);
    }
    return live;
}

/* Ends the entry's link to its election, releasing what it holds. */
static void entry_detach(file_entry *en)
{
    file_store *fs = en->fs;
    ls_election_view(en->e)->backend_data = NULL;
    en->e = NULL;
    for (file_entry **p = &fs->entries; *p; p = &(*p)->next) {
        if (*p == en) {
            *p = en->next;
            break;
        }
    }
    evtimer_del(en->wake);
    if (en->holding) {
        en->holding = false;
        release_start(fs, &en->key, en->term, en->expiry_ns);
    }
    entry_drop(en);
}

/* The attempt is over for this entry: the engine backs off and campaigns
 * (or follows) again with a fresh entry. */
static void entry_fail(file_entry *en, const char *message)
{
    ls_election *e = en->e;
    entry_detach(en);
    ls_election_failed(e, message);
}

/* Reports a store error; false if the report cancelled the entry. */
static bool entry_error(file_entry *en, const char *message)
{
    entry_hold(en);
    ls_election_error(en->e, message);
    return entry_drop(en);
}

static bool entry_report_leader(file_entry *en, const lease_record *r)
{
    entry_hold(en);
    if (r)
        ls_election_leader(en->e, r->value, r->value_len, r->term);
    else
        ls_election_leader(en->e, NULL, 0, 0);
    return entry_drop(en);
}

static bool entry_lost(file_entry *en, const char *reason)
{
    en->holding = false;
    entry_hold(en);
    ls_election_lost(en->e, reason);
    return entry_drop(en);
}

/* Arms the store's renewal timer for the earliest renewal due. */
static void store_schedule_renew(file_store *fs)
{
    double next = 0;
    bool any = false;
    for (file_entry *en = fs->entries; en; en = en->next) {
        if (en->holding && (!any || en->renew_at < next)) {
            next = en->renew_at;
            any = true;
        }
    }
    if (any)
        arm(fs->renew, next - ls_now());
    else
        evtimer_del(fs->renew);
}

/* Notes a busy key mutex (on_error hears of a long spell) and returns when
 * to try again. */
static double entry_busy(file_entry *en)
{
    double now = ls_now();
    if (en->busy_since == 0)
        en->busy_since = now;
    if (!en->stall_reported && now - en->busy_since > MUTEX_STALL_REPORT) {
        en->stall_reported = true;
        char msg[600];
        snprintf(msg, sizeof msg,
                 "file store: '%s' has been locked for over %d s (a stopped process?); still "
                 "trying",
                 en->key.mutex_path, MUTEX_STALL_REPORT);
        entry_error(en, msg);
    }
    return mutex_retry_after(now - en->busy_since);
}

/* No one else's lease is seen (any more): nothing to re-check. */
static void entry_forget_holder(file_entry *en)
{
    en->seen_holder[0] = '\0';
    en->close_recheck = 0;
}

static bool holder_closed(file_store *fs, const char *id)
{
    for (unsigned i = 0; i < CLOSED_HOLDERS; i++)
        if (!strcmp(fs->closed_holders[i], id))
            return true;
    return false;
}

/* A valid lease of someone else: report it, and wake at its expiry in case
 * its holder hangs, or sooner while its holder file has just closed. */
static void entry_sees_leader(file_entry *en, const lease_record *r, long long now)
{
    double to_expiry = (double)(r->expiry_ns - now) / 1e9 + 0.001;
    /* no longer waiting for the key mutex: a later busy spell is a new one */
    en->busy_since = 0;
    en->stall_reported = false;
    /* a holder new to us may have closed before we read its record (its
     * close event came in the batch that brought the record) */
    if (strcmp(en->seen_holder, r->holder))
        en->close_recheck = holder_closed(en->fs, r->holder) ? CLOSE_RECHECK_FIRST : 0;
    snprintf(en->seen_holder, sizeof en->seen_holder, "%s", r->holder);
    if (en->close_recheck > 0 && en->close_recheck <= CLOSE_RECHECK_LAST &&
        en->close_recheck < to_expiry) {
        arm(en->wake, en->close_recheck);
        en->close_recheck *= 2;
    } else {
        en->close_recheck = 0;
        arm(en->wake, to_expiry);
    }
    entry_report_leader(en, r);
}

/* Candidates: takes the vacant key under its mutex. */
static void entry_acquire(file_entry *en)
{
    file_store *fs = en->fs;
    char err[600];
    /* the proof of holding dates from before the read that found it vacant */
    double sent_at = ls_now();
    int lock = mutex_take(&en->key, err, sizeof err);
    if (lock == MUTEX_BUSY) {
        arm(en->wake, entry_busy(en));
        return;
    }
    if (lock < 0) {
        entry_fail(en, err);
        return;
    }
    en->busy_since = 0;
    en->stall_reported = false;
    lease_record r;
    if (record_read(&en->key, &r, err, sizeof err) < 0) {
        close(lock);
        entry_fail(en, err);
        return;
    }
    long long now = mono_ns();
    if (lease_valid(fs, &r, now)) {
        close(lock); /* someone took it between our reads */
        entry_sees_leader(en, &r, now);
        record_free(&r);
        return;
    }
    /* A garbage record's term is unknown: the term file keeps the highest
     * term handed out, so the counter cannot go backwards. */
    uint64_t counted;
    char term_err[600] = "";
    if (term_read(&en->key, &counted, term_err, sizeof term_err) < 0)
        counted = 0;
    uint64_t term = ((r.exists && !r.garbage && r.term > counted) ? r.term : counted) + 1;
    record_free(&r);
    if (term > (uint64_t)INT64_MAX) {
        /* files hold JSON integers (int64): a larger term would be read back
         * as garbage and the count would start again at 1 */
        close(lock);
        snprintf(err, sizeof err,
                 "file store: the term of '%s' is at its largest (%lld); no higher one can be "
                 "handed out (remove its .lease and .term files to start again)",
                 en->key.lease_path, (long long)INT64_MAX);
        entry_fail(en, err);
        return;
    }
    /* the term file first: no record ever shows a term it has not counted */
    int rc = term_write(fs, &en->key, term, err, sizeof err);
    long long expiry_ns = mono_ns() + (long long)(en->ttl * 1e9);
    if (rc == 0)
        rc = record_write(fs, &en->key, en->value ? en->value : "", en->value_len, term,
                          expiry_ns, err, sizeof err);
    close(lock);
    if (rc < 0) {
        entry_fail(en, err);
        return;
    }
    evtimer_del(en->wake);
    entry_forget_holder(en);
    en->garbage_reported = false; /* the record is ours and sound now */
    en->holding = true;
    en->term = term;
    en->expiry_ns = expiry_ns;
    en->renew_at = sent_at + en->renew_period;
    store_schedule_renew(fs);
    if (term_err[0] && !entry_error(en, term_err))
        return; /* cancelled: the cancel released the key */
    entry_hold(en);
    ls_election_acquired(en->e, term, sent_at);
    entry_drop(en);
}

/* Reads the key's record and acts on it: notices a lost holding, reports
 * the leader, takes a vacant key (candidates). Never writes for a holder:
 * our own renewals wake us too. */
static void entry_check(file_entry *en)
{
    file_store *fs = en->fs;
    char err[600];
    lease_record r;
    if (record_read(&en->key, &r, err, sizeof err) < 0) {
        if (en->holding)
            entry_error(en, err); /* the renewal decides */
        else
            entry_fail(en, err);
        return;
    }
    long long now = mono_ns();
    if (en->holding) {
        bool ours = record_is_ours(fs, &r, en->term);
        if (ours && r.expiry_ns > now) {
            record_free(&r);
            return;
        }
        if (!entry_lost(en, ours ? "session" : "deleted")) {
            record_free(&r);
            return;
        }
    }
    if (!r.garbage) {
        en->garbage_reported = false;
    } else if (!en->garbage_reported) {
        en->garbage_reported = true;
        char msg[800];
        snprintf(msg, sizeof msg,
                 "file store: '%s' is not a lease record (%s); the key counts as vacant",
                 en->key.lease_path, r.why);
        if (!entry_error(en, msg)) {
            record_free(&r);
            return;
        }
    }
    if (lease_valid(fs, &r, now)) {
        entry_sees_leader(en, &r, now);
        record_free(&r);
        return;
    }
    /* our own release (resign): give the others the first chance */
    long long grace = 0;
    if (en->candidate && r.released_by && !strcmp(r.released_by, fs->holder_id) &&
        !strcmp(r.boot, fs->boot_id)) {
        /* released_at comes from a file: one in the future is none we
         * wrote (waiting on it would never end, adding to it overflows) */
        if (r.released_at_ns <= now && r.released_at_ns > now - RESIGN_GRACE_NS)
            grace = r.released_at_ns + RESIGN_GRACE_NS - now;
    }
    record_free(&r);
    entry_forget_holder(en);
    if (grace > 0) {
        arm(en->wake, (double)grace / 1e9);
        entry_report_leader(en, NULL);
    } else if (en->candidate) {
        entry_acquire(en);
    } else {
        entry_report_leader(en, NULL);
    }
}

/* Extends our lease if the record still names us with our term. */
static void entry_renew(file_entry *en)
{
    file_store *fs = en->fs;
    char err[600];
    double sent_at = ls_now();
    int lock = mutex_take(&en->key, err, sizeof err);
    if (lock == MUTEX_BUSY) {
        en->renew_at = sent_at + entry_busy(en);
        return;
    }
    if (lock < 0) {
        en->renew_at = sent_at + en->renew_period * 0.3;
        entry_error(en, err);
        return;
    }
    en->busy_since = 0;
    en->stall_reported = false;
    lease_record r;
    if (record_read(&en->key, &r, err, sizeof err) < 0) {
        close(lock);
        en->renew_at = sent_at + en->renew_period * 0.3;
        entry_error(en, err);
        return;
    }
    long long now = mono_ns();
    bool ours = record_is_ours(fs, &r, en->term);
    bool expired = r.expiry_ns <= now;
    record_free(&r);
    if (!ours || expired) {
        /* an expired lease is not extended: others may have seen it vacant */
        close(lock);
        if (entry_lost(en, ours ? "session" : "deleted"))
            entry_check(en);
        return;
    }
    long long expiry_ns = now + (long long)(en->ttl * 1e9);
    int rc = record_write(fs, &en->key, en->value ? en->value : "", en->value_len, en->term,
                          expiry_ns, err, sizeof err);
    close(lock);
    if (rc < 0) {
        en->renew_at = sent_at + en->renew_period * 0.3;
        entry_error(en, err);
        return;
    }
    en->expiry_ns = expiry_ns;
    en->renew_at = sent_at + en->renew_period;
    entry_hold(en);
    ls_election_renewed(en->e, sent_at);
    entry_drop(en);
}

/* ---- events ---- */

/* The store's entries for which want() holds, each with a reference, so
 * reports may cancel any of them while the caller walks the list. */
static size_t entries_take(file_store *fs, bool (*want)(file_entry *, void *), void *arg,
                           file_entry ***out)
{
    size_t n = 0;
    for (file_entry *en = fs->entries; en; en = en->next)
        n++;
    file_entry **list = malloc((n ? n : 1) * sizeof *list);
    size_t k = 0;
    for (file_entry *en = fs->entries; en; en = en->next) {
        if (want(en, arg)) {
            entry_hold(en);
            list[k++] = en;
        }
    }
    *out = list;
    return k;
}

static void entries_drop(file_entry **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        entry_drop(list[i]);
    free(list);
}

static bool want_renewal(file_entry *en, void *arg)
{
    /* batch renewals due within a tenth of their period */
    return en->holding && en->renew_at <= *(double *)arg + en->renew_period / 10;
}

static void renew_cb(evutil_socket_t fd, short what, void *arg)
{
    file_store *fs = arg;
    store_enter(fs);
    double now = ls_now();
    /* Removing our holder file tells the others we are dead. Cleaners by
     * age (systemd-tmpfiles: /tmp files over 10 days on Debian 13) would do
     * that to a long-lived leader: while leading, its times stay new. */
    if (fs->holder_fd >= 0)
        futimens(fs->holder_fd, NULL);
    file_entry **list;
    size_t n = entries_take(fs, want_renewal, &now, &list);
    for (size_t i = 0; i < n; i++)
        if (list[i]->e && list[i]->holding)
            entry_renew(list[i]);
    entries_drop(list, n);
    if (!fs->closed)
        store_schedule_renew(fs);
    store_leave(fs);
}

static bool want_any(file_entry *en, void *arg) { return true; }

static bool want_dirty(file_entry *en, void *arg)
{
    bool dirty = en->dirty;
    en->dirty = false;
    return dirty;
}

static void mark_lease(file_store *fs, const char *name)
{
    size_t n = strlen(name);
    if (n <= 6 || strcmp(name + n - 6, ".lease"))
        return;
    for (file_entry *en = fs->entries; en; en = en->next)
        if (strlen(en->key.name) == n - 6 && !strncmp(en->key.name, name, n - 6))
            en->dirty = true;
}

static void mark_holder(file_store *fs, const char *id)
{
    snprintf(fs->closed_holders[fs->closed_next], HOLDER_ID_MAX, "%s", id);
    fs->closed_next = (fs->closed_next + 1) % CLOSED_HOLDERS;
    for (file_entry *en = fs->entries; en; en = en->next)
        if (en->seen_holder[0] && !strcmp(en->seen_holder, id)) {
            en->dirty = true;
            en->close_recheck = CLOSE_RECHECK_FIRST;
        }
}

static void inotify_cb(evutil_socket_t fd, short what, void *arg)
{
    file_store *fs = arg;
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool overflow = false;
    const char *lost = NULL;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0)
            break; /* EAGAIN: drained */
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            p += sizeof *ev + ev->len;
            bool ours = ev->wd == fs->wd_dir || ev->wd == fs->wd_holders;
            if (ev->mask & IN_Q_OVERFLOW)
                overflow = true;
            else if (ours && (ev->mask & (IN_IGNORED | IN_MOVE_SELF)))
                lost = ev->wd == fs->wd_dir ? fs->dir : fs->holders_dir;
            else if (!ev->len || ev->name[0] == '.')
                continue; /* temp files; encoded names never start with '.' */
            else if (ev->wd == fs->wd_dir)
                mark_lease(fs, ev->name);
            else if (ev->wd == fs->wd_holders && (ev->mask & (IN_DELETE | IN_MOVED_FROM)) &&
                     !strcmp(ev->name, fs->holder_id))
                lost = fs->holder_path;
            else if (ev->wd == fs->wd_holders)
                mark_holder(fs, ev->name);
        }
    }
    if (overflow) /* events were lost: everyone re-reads */
        for (file_entry *en = fs->entries; en; en = en->next)
            en->dirty = true;
    store_enter(fs);
    file_entry **list;
    size_t n;
    if (lost) {
        /* Our leases count as a dead holder's, or we would hear of no
         * change any more: nothing this store holds or sees can be trusted.
         * Every entry fails (a leader loses) and the engine starts it again,
         * by which time store_repair has made the directories, a new holder
         * file and new watches. */
        fs->broken = true;
        char msg[600];
        snprintf(msg, sizeof msg,
                 "file store: '%s' was removed or moved away; starting again with a new "
                 "holder file",
                 lost);
        n = entries_take(fs, want_any, NULL, &list);
        for (size_t i = 0; i < n; i++)
            if (list[i]->e)
                entry_fail(list[i], msg);
        entries_drop(list, n);
    }
    n = entries_take(fs, want_dirty, NULL, &list);
    for (size_t i = 0; i < n; i++)
        if (list[i]->e)
            entry_check(list[i]);
    entries_drop(list, n);
    store_leave(fs);
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    file_entry *en = arg;
    file_store *fs = en->fs;
    store_enter(fs);
    entry_hold(en);
    if (en->e && !en->holding)
        entry_check(en);
    entry_drop(en);
    store_leave(fs);
}

/* ---- the vtable ---- */

static int store_repair(file_store *fs, char *err, size_t errlen);

static void entry_start(ls_store *store, ls_election *e, bool candidate)
{
    file_store *fs = store->impl;
    struct ls_election_view *view = ls_election_view(e);
    char err[600];
    if (fs->broken && store_repair(fs, err, sizeof err) < 0) {
        ls_election_failed(e, err);
        return;
    }
    file_key key;
    if (key_init(fs, view->key, &key, err, sizeof err) < 0) {
        ls_election_failed(e, err);
        return;
    }
    file_entry *en = calloc(1, sizeof *en);
    en->fs = fs;
    en->e = e;
    en->key = key;
    en->value = view->value;
    en->value_len = view->value_len;
    en->ttl = view->ttl;
    en->renew_period = ls_renew_period(view);
    en->candidate = candidate;
    en->wake = evtimer_new(ls_loop_base(), wake_cb, en);
    en->refs = 1;
    en->next = fs->entries;
    fs->entries = en;
    view->backend_data = en;
    store_enter(fs);
    entry_hold(en);
    entry_check(en);
    entry_drop(en);
    store_leave(fs);
}

static void file_campaign(ls_store *store, ls_election *e) { entry_start(store, e, true); }

static void file_follow(ls_store *store, ls_election *e) { entry_start(store, e, false); }

static void file_cancel(ls_store *store, ls_election *e)
{
    file_entry *en = ls_election_view(e)->backend_data;
    if (en)
        entry_detach(en);
}

static int mkdir_p(const char *dir, char *err, size_t errlen)
{
    char *path = strdup(dir);
    int rc = 0;
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(path, 0700) < 0 && errno != EEXIST) {
            snprintf(err, errlen, "file store: cannot create directory '%s': %s", path,
                     strerror(errno));
            rc = -1;
            break;
        }
        *p = saved;
        if (saved == '\0')
            break;
    }
    struct stat st;
    if (rc == 0 && (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))) {
        snprintf(err, errlen, "file store: '%s' is not a directory", dir);
        rc = -1;
    }
    free(path);
    return rc;
}

#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"

/* This boot's id: records of another boot name holders that are gone. */
static int read_boot_id(char *out, size_t len, char *err, size_t errlen)
{
    FILE *f = fopen(BOOT_ID_PATH, "re");
    out[0] = '\0';
    if (!f) {
        snprintf(err, errlen,
                 "file store: cannot read this boot's id from " BOOT_ID_PATH
                 " (%s); without it, leases from before a reboot cannot be told from live "
                 "ones",
                 strerror(errno));
        return -1;
    }
    if (fgets(out, (int)len, f))
        out[strcspn(out, "\n")] = '\0';
    fclose(f);
    if (!out[0]) {
        snprintf(err, errlen, "file store: " BOOT_ID_PATH " is empty");
        return -1;
    }
    return 0;
}

/* Creates and locks this store's holder file: while the lock is held, the
 * records naming us are alive. */
static int holder_create(file_store *fs, char *err, size_t errlen)
{
    unsigned long long rnd = 0;
    if (getrandom(&rnd, sizeof rnd, 0) != sizeof rnd)
        rnd = (unsigned long long)mono_ns() ^ ((unsigned long long)getpid() << 32);
    snprintf(fs->holder_id, sizeof fs->holder_id, "%d-%016llx", (int)getpid(), rnd);
    fs->holder_path = join(fs->holders_dir, "/", fs->holder_id);
    /* O_RDWR: the kernel's close of it at our death raises IN_CLOSE_WRITE;
     * O_CLOEXEC: a child we spawn must not keep us alive */
    fs->holder_fd = open(fs->holder_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fs->holder_fd < 0) {
        snprintf(err, errlen, "file store: cannot create '%s': %s", fs->holder_path,
                 strerror(errno));
        return -1;
    }
    if (flock(fs->holder_fd, LOCK_EX | LOCK_NB) < 0) {
        snprintf(err, errlen, "file store: cannot lock '%s': %s", fs->holder_path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Watches the directories now at the store's paths; a watch on a
 * directory that has left its path is dropped. */
static int watch_add(file_store *fs, char *err, size_t errlen)
{
    int *wds[2] = {&fs->wd_dir, &fs->wd_holders};
    const char *paths[2] = {fs->dir, fs->holders_dir};
    const uint32_t masks[2] = {DIR_EVENTS, HOLDERS_EVENTS};
    for (int i = 0; i < 2; i++) {
        int wd = inotify_add_watch(fs->inotify_fd, paths[i], masks[i]);
        if (wd < 0) {
            snprintf(err, errlen, "file store: cannot watch '%s': %s", paths[i], strerror(errno));
            return -1;
        }
        if (*wds[i] >= 0 && *wds[i] != wd)
            inotify_rm_watch(fs->inotify_fd, *wds[i]);
        *wds[i] = wd;
    }
    return 0;
}

static int watch_dirs(file_store *fs, char *err, size_t errlen)
{
    fs->wd_dir = fs->wd_holders = -1;
    fs->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fs->inotify_fd < 0) {
        snprintf(err, errlen, "file store: inotify: %s", strerror(errno));
        return -1;
    }
    if (watch_add(fs, err, errlen) < 0)
        return -1;
    fs->inotify_ev =
        event_new(ls_loop_base(), fs->inotify_fd, EV_READ | EV_PERSIST, inotify_cb, fs);
    event_add(fs->inotify_ev, NULL);
    return 0;
}

/* Makes a broken store whole again: its directories, watches on them, and
 * a new holder file. Records naming the old one count as a dead holder's,
 * as they must: while it was gone, every other store counted it dead. */
static int store_repair(file_store *fs, char *err, size_t errlen)
{
    if (mkdir_p(fs->dir, err, errlen) < 0 || mkdir_p(fs->holders_dir, err, errlen) < 0 ||
        watch_add(fs, err, errlen) < 0)
        return -1;
    if (fs->holder_fd >= 0) {
        close(fs->holder_fd);
        unlink(fs->holder_path);
        fs->holder_fd = -1;
    }
    free(fs->holder_path);
    fs->holder_path = NULL;
    if (holder_create(fs, err, errlen) < 0) {
        if (fs->holder_fd >= 0) {
            close(fs->holder_fd);
            unlink(fs->holder_path);
            fs->holder_fd = -1;
        }
        return -1;
    }
    fs->broken = false;
    ls_log(LS_INFO, "file store: '%s' made whole again, as holder %s", fs->dir, fs->holder_id);
    return 0;
}

static void store_free(file_store *fs)
{
    if (fs->inotify_ev)
        event_free(fs->inotify_ev);
    if (fs->inotify_fd >= 0)
        close(fs->inotify_fd);
    if (fs->renew)
        event_free(fs->renew);
    free(fs->dir);
    free(fs->holders_dir);
    free(fs->holder_path);
    free(fs);
}

static int file_open(ls_store *store, const ls_store_config *cfg, char *err, size_t errlen)
{
    static const char *const known[] = {NULL};
    if (ls_config_check(cfg, known, err, errlen) < 0)
        return -1;
    if (!cfg->path || cfg->path[0] != '/') {
        snprintf(err, errlen, "file store URL '%s' needs an absolute directory: file:///dir",
                 cfg->redacted);
        return -1;
    }
    file_store *fs = calloc(1, sizeof *fs);
    fs->holder_fd = -1;
    fs->inotify_fd = -1;
    fs->dir = strdup(cfg->path);
    for (size_t n = strlen(fs->dir); n > 1 && fs->dir[n - 1] == '/'; n--)
        fs->dir[n - 1] = '\0';
    fs->holders_dir = join(fs->dir, "/holders", "");
    if (read_boot_id(fs->boot_id, sizeof fs->boot_id, err, errlen) < 0 ||
        mkdir_p(fs->dir, err, errlen) < 0 || mkdir_p(fs->holders_dir, err, errlen) < 0 ||
        holder_create(fs, err, errlen) < 0 || watch_dirs(fs, err, errlen) < 0) {
        if (fs->holder_fd >= 0) {
            close(fs->holder_fd);
            unlink(fs->holder_path);
        }
        store_free(fs);
        return -1;
    }
    fs->renew = evtimer_new(ls_loop_base(), renew_cb, fs);
    store->impl = fs;
    return 0;
}

static void file_close(ls_store *store)
{
    file_store *fs = store->impl;
    store->impl = NULL;
    while (fs->entries) /* none, if the engine cancelled every election */
        entry_detach(fs->entries);
    /* Releases still waiting for a mutex are moot: once the holder file is
     * unlocked below, every record naming us counts as vacant. */
    while (fs->releases)
        release_free(fs->releases);
    evtimer_del(fs->renew);
    event_del(fs->inotify_ev);
    /* close before unlink: the watch on holders/ only sees the close of a
     * file that is still linked there */
    if (fs->holder_fd >= 0) { /* -1: a repair failed to make it */
        close(fs->holder_fd);
        unlink(fs->holder_path);
    }
    fs->closed = true;
    if (fs->depth == 0)
        store_free(fs);
}

const ls_backend ls_backend_file = {
    .scheme = "file",
    .min_ttl = 0.1,
    .max_ttl = 86400,
    .open = file_open,
    .campaign = file_campaign,
    .follow = file_follow,
    .cancel = file_cancel,
    .close = file_close,
    .inject = NULL,
};
