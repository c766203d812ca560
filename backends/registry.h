/* Every compiled-in backend, by URL scheme. */
#ifndef LEADERSHIP_REGISTRY_H
#define LEADERSHIP_REGISTRY_H

#include "store.h"

/* The backend for `scheme`, or NULL. */
const ls_backend *ls_backend_find(const char *scheme);

/* NULL-terminated list of scheme names, for "known:" hints. */
extern const char *const ls_backend_schemes[];

#endif
