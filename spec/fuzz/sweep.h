/* For the fuzz targets that keep files (file, policy, redis): clearing what
 * earlier runs left when they died. Needs _GNU_SOURCE before any include. */
#ifndef LEADERSHIP_FUZZ_SWEEP_H
#define LEADERSHIP_FUZZ_SWEEP_H

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline int fuzz_remove(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    return remove(path);
}

/* Removes what earlier runs of a target left in `dir` when they died (a
 * crash skips atexit): the entries "<prefix><pid>..." whose pid is gone. */
static inline void fuzz_sweep(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    size_t n = strlen(prefix);
    for (struct dirent *de; (de = readdir(d));) {
        if (strncmp(de->d_name, prefix, n) || de->d_name[n] < '0' || de->d_name[n] > '9')
            continue;
        long pid = strtol(de->d_name + n, NULL, 10);
        if (pid > 0 && kill((pid_t)pid, 0) < 0 && errno == ESRCH) {
            char path[512];
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            nftw(path, fuzz_remove, 8, FTW_DEPTH | FTW_PHYS);
        }
    }
    closedir(d);
}

#endif
