/* The Lua half of the module, compiled in (see runtime/embed.lua). */
#ifndef LEADERSHIP_EMBEDDED_H
#define LEADERSHIP_EMBEDDED_H

#include <stddef.h>

struct ls_embedded_module {
    const char *name;      /* "leadership", "leadership.backoff" */
    const char *chunkname; /* "@lua/leadership/init.lua" */
    const char *source;
    size_t length;
};

/* Ends with an entry whose name is NULL. */
extern const struct ls_embedded_module ls_embedded_modules[];

#endif
