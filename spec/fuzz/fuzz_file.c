/* libFuzzer target: the file backend (backends/file.c) reading lease
 * records and term files anyone with access to the directory may have
 * written. The input's chunks (see fuzz.h) become the key's files in a
 * private temp directory; a candidate, a second one and a follower of the
 * key run through the real engine while the input rewrites the files.
 *
 * In file contents "@SELF@" becomes this store's holder id, "@PEER@" a
 * holder that is alive (its lock is held here) and "@BOOT@" this boot's
 * id: things the input cannot know but real records hold.
 *
 * Input: chunk (lease record), chunk (term file), then steps: a byte
 * (modulo 8) and its chunk where it takes one:
 *   0 record replaced by rename   1 term file written   2 timers   3 loop
 *   4 A resigns   5 A stops / runs again   6 record deleted
 *   7 record rewritten in place
 */
#include "../../backends/file.c"
#include <dirent.h>

#include "script.h"
#include "sweep.h"

static char dir[64];
static char lease_path[128], term_path[128], mutex_path[128], tmp_path[128];
static char boot[64];

/* Leaves the directory as the next input expects it: no key files, and no
 * holder but the peer. By name: nothing else is ever left here (the temp
 * files are renamed), so no listing is needed. */
static void clear_key(void)
{
    unlink(lease_path);
    unlink(term_path);
    unlink(mutex_path);
}

static ls_store *shared_store;
static void settle(void);

/* At exit: the temp directory goes. */
static void remove_dir(void)
{
    if (shared_store) {
        ls_store_unref(shared_store);
        shared_store = NULL;
        settle();
    }
    nftw(dir, fuzz_remove, 8, FTW_DEPTH | FTW_PHYS);
}

static void setup_once(void)
{
    if (dir[0])
        return;
    /* tmpfs where there is one: renames there cost microseconds */
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    fuzz_sweep(base, "leadership-fuzz-file-");
    snprintf(dir, sizeof dir, "%s/leadership-fuzz-file-%d", base, (int)getpid());
    FUZZ_ASSERT(mkdir(dir, 0700) == 0);
    char path[128];
    snprintf(path, sizeof path, "%s/holders", dir);
    FUZZ_ASSERT(mkdir(path, 0755) == 0);
    /* a live peer: its holder file is locked for as long as we run */
    snprintf(path, sizeof path, "%s/holders/fuzzpeer", dir);
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    FUZZ_ASSERT(fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0);
    snprintf(lease_path, sizeof lease_path, "%s/svc%%2Fleader.lease", dir);
    snprintf(term_path, sizeof term_path, "%s/svc%%2Fleader.term", dir);
    snprintf(mutex_path, sizeof mutex_path, "%s/svc%%2Fleader.mutex", dir);
    snprintf(tmp_path, sizeof tmp_path, "%s/fuzz.tmp", dir);
    char err[300];
    FUZZ_ASSERT(read_boot_id(boot, sizeof boot, err, sizeof err) == 0);
    atexit(remove_dir);
}

/* What the placeholder at p stands for, or NULL if none starts there. */
static const char *placeholder(const char *p, size_t left, const char *self)
{
    if (left < 6)
        return NULL;
    if (!memcmp(p, "@SELF@", 6))
        return self;
    if (!memcmp(p, "@PEER@", 6))
        return "fuzzpeer";
    if (!memcmp(p, "@BOOT@", 6))
        return boot;
    return NULL;
}

static void write_all(int fd, const char *buf, size_t len)
{
    FUZZ_ASSERT(write(fd, buf, len) == (ssize_t)len);
}

/* Writes text to path with the placeholders filled in; by rename if asked.
 * Built in a buffer and written by one system call where it fits: stdio
 * would add an fstat and two allocations per file. */
static void put(const char *path, const char *text, size_t len, const char *self, bool by_rename)
{
    int fd = open(by_rename ? tmp_path : path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    FUZZ_ASSERT(fd >= 0);
    char buf[8192];
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        const char *sub = placeholder(text + i, len - i, self);
        const char *piece = sub ? sub : text + i;
        size_t plen = sub ? strlen(sub) : 1;
        i += sub ? 6 : 1;
        if (n + plen > sizeof buf) {
            write_all(fd, buf, n);
            n = 0;
        }
        memcpy(buf + n, piece, plen);
        n += plen;
    }
    if (n)
        write_all(fd, buf, n);
    close(fd);
    if (by_rename)
        FUZZ_ASSERT(rename(tmp_path, path) == 0);
}

/* Holder files in the directory now. */
static unsigned holders(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/holders", dir);
    DIR *d = opendir(path);
    unsigned n = 0;
    for (struct dirent *de; (de = readdir(d));)
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Runs timers and the loop until nothing is left to run. */
static void settle(void)
{
    for (int round = 0; round < 64; round++) {
        fuzz_drain_loop();
        if (fuzz_fire_timers() == 0)
            break;
    }
}

/* The store lives across inputs: closing an inotify descriptor takes the
 * kernel some 15 ms, so a store per input would make this fuzzer crawl.
 * Every 256 inputs it is closed and opened again, so closing is fuzzed too. */
static unsigned store_uses;

static ls_store *store_get(void)
{
    if (shared_store && ++store_uses % 256 == 0) {
        ls_store_unref(shared_store);
        shared_store = NULL;
        settle();
        /* closing a store ends all of its work, and its holder file goes */
        FUZZ_ASSERT(ls_store_live_count() == 0);
        FUZZ_ASSERT(ls_loop_holds() == 0);
        FUZZ_ASSERT(holders() == 1);
    }
    if (!shared_store) {
        char url[128];
        snprintf(url, sizeof url, "file://%s", dir);
        ls_store_config cfg = {0};
        char err[512];
        FUZZ_ASSERT(ls_config_parse(&cfg, url, err, sizeof err) == 0);
        shared_store = ls_store_open(&cfg, err, sizeof err);
        FUZZ_ASSERT(shared_store != NULL);
    }
    return shared_store;
}

static void wind_down(ls_election **elections, size_t n)
{
    for (size_t i = 0; i < n; i++)
        finish(&elections[i]);
    settle();
    /* stopped elections leave nothing behind */
    FUZZ_ASSERT(ls_election_live_count() == 0);
    FUZZ_ASSERT(((file_store *)shared_store->impl)->entries == NULL);
    FUZZ_ASSERT(ls_loop_holds() == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    setup_once();
    clear_key();
    fuzz_in in = {data, size};
    ls_store *store = store_get();
    const char *self = ((file_store *)store->impl)->holder_id;

    size_t len;
    const char *text = fuzz_chunk(&in, &len);
    put(lease_path, text, len, self, true);
    text = fuzz_chunk(&in, &len);
    put(term_path, text, len, self, false);

    ls_election *elections[3];
    elections[0] = candidate(store, "node-a", 2);
    elections[1] = candidate(store, "{\"name\":\"node-b\"}", 2);
    elections[2] = follower(store, 2);
    fuzz_drain_loop();

    for (int steps = 0; !fuzz_done(&in) && steps < 100; steps++) {
        switch (fuzz_byte(&in) % 8) {
        case 0:
            text = fuzz_chunk(&in, &len);
            put(lease_path, text, len, self, true);
            break;
        case 1:
            text = fuzz_chunk(&in, &len);
            put(term_path, text, len, self, false);
            break;
        case 2:
            fuzz_fire_timers();
            break;
        case 3:
            fuzz_drain_loop();
            break;
        case 4:
            if (elections[0])
                ls_election_resign(elections[0]);
            break;
        case 5:
            if (elections[0])
                finish(&elections[0]);
            else
                elections[0] = candidate(store, "node-a", 2);
            break;
        case 6:
            unlink(lease_path);
            break;
        case 7:
            text = fuzz_chunk(&in, &len);
            put(lease_path, text, len, self, false);
            break;
        }
        fuzz_drain_loop();
    }
    wind_down(elections, 3);
    return 0;
}
