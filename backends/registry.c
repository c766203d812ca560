#include "registry.h"

#include <string.h>

extern const ls_backend ls_backend_memory;
extern const ls_backend ls_backend_file;

static const ls_backend *const all_backends[] = {
    &ls_backend_memory,
    &ls_backend_file,
    NULL,
};

const char *const ls_backend_schemes[] = {
    "memory",
    "file",
    NULL,
};

const ls_backend *ls_backend_find(const char *scheme)
{
    for (const ls_backend *const *b = all_backends; *b; b++)
        if (!strcmp((*b)->scheme, scheme))
            return *b;
    return NULL;
}
