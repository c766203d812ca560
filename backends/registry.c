#include "registry.h"

#include <string.h>

extern const ls_backend ls_backend_memory;
extern const ls_backend ls_backend_file;
extern const ls_backend ls_backend_consul;
extern const ls_backend ls_backend_etcd;
extern const ls_backend ls_backend_redis;
extern const ls_backend ls_backend_rediss;
extern const ls_backend ls_backend_zookeeper;

static const ls_backend *const all_backends[] = {
    &ls_backend_memory,
    &ls_backend_file,
    &ls_backend_consul,
    &ls_backend_etcd,
    &ls_backend_redis,
    &ls_backend_rediss,
    &ls_backend_zookeeper,
    NULL,
};

const char *const ls_backend_schemes[] = {
    "memory",
    "file",
    "consul",
    "etcd",
    "redis",
    "rediss",
    "zk",
    NULL,
};

const ls_backend *ls_backend_find(const char *scheme)
{
    for (const ls_backend *const *b = all_backends; *b; b++)
        if (!strcmp((*b)->scheme, scheme))
            return *b;
    return NULL;
}
