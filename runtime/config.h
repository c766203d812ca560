/* Store URLs: parsing into an ls_store_config, and the option helpers. */
#ifndef LEADERSHIP_CONFIG_H
#define LEADERSHIP_CONFIG_H

#include "../backends/store.h"

/* Parses `url` into cfg (zeroed by the caller). Query parameters become
 * options. -1 with a message naming what is wrong. */
int ls_config_parse(ls_store_config *cfg, const char *url, char *err, size_t errlen);

/* Reads the option 'timeout' into cfg->timeout, (0, 3600] seconds, as
 * parse does: again after options were set. -1 with a message. */
int ls_config_timeout(ls_store_config *cfg, char *err, size_t errlen);

/* Adds (or replaces) an option; the strings are copied. */
void ls_config_set(ls_store_config *cfg, const char *name, const char *value);

void ls_config_free(ls_store_config *cfg);

/* The closest of `words` (NULL-terminated) to `word`, or NULL if none is
 * close: for "did you mean" hints. */
const char *ls_closest_word(const char *word, const char *const *words);

#endif
