/* libFuzzer target: store URLs and their options (runtime/config.c), then
 * the option checks of the backends that open without touching the
 * network or the file system (etcd, Consul, Redis, memory).
 *
 * Input: a URL, then optional lines "name=value" as the Lua options table
 * would add them (ls_config_set), each ending at '\n'.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../runtime/config.c"
#include "../../runtime/engine.h"
#include "../../runtime/loop.h"
#include "fuzz.h"

/* The backends whose open() only allocates: no connect, no DNS, no files. */
static const char *const openable[] = {"etcd", "consul", "redis", "memory", NULL};

static const char *const known[] = {
    "tls.ca",          "tls.cert",   "tls.key",       "auth.username", "auth.password",
    "session_timeout", "lock_delay", "poll_interval", "wait",          NULL};

/* The redacted URL shows no password: in its authority (up to the first
 * '/' or '?', as the parser splits it), whatever follows the first ':' of
 * the userinfo (up to the last '@', as the parser splits it) is stars. */
static bool password_hidden(const char *redacted, const char *scheme)
{
    /* a URL without a scheme has no userinfo to speak of (its "://" may sit
     * in a query value the redaction replaced) */
    if (!scheme || !*scheme ||
        strspn(scheme, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                       "0123456789+-.") != strlen(scheme))
        return true;
    const char *sep = strstr(redacted, "://");
    if (!sep)
        return true;
    const char *authority = sep + 3;
    size_t len = strcspn(authority, "/?");
    const char *at = NULL;
    for (const char *p = authority; p < authority + len; p++)
        if (*p == '@')
            at = p;
    if (!at)
        return true;
    const char *colon = memchr(authority, ':', (size_t)(at - authority));
    if (!colon)
        return true;
    for (const char *p = colon + 1; p < at; p++)
        if (*p != '*')
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    char *text = fuzz_cstring(data, size);
    char *lines = strchr(text, '\n');
    if (lines)
        *lines++ = '\0';

    ls_store_config cfg = {0};
    char err[512];
    int rc = ls_config_parse(&cfg, text, err, sizeof err);
    /* error messages show it too */
    FUZZ_ASSERT(cfg.redacted && password_hidden(cfg.redacted, cfg.scheme));
    if (rc == 0) {
        for (char *line = lines; line && *line;) {
            char *next = strchr(line, '\n');
            if (next)
                *next++ = '\0';
            char *eq = strchr(line, '=');
            if (eq) {
                *eq = '\0';
                ls_config_set(&cfg, line, eq + 1);
            }
            line = next;
        }
        /* what every backend asks of its options */
        for (size_t i = 0; i < cfg.noptions; i++) {
            double seconds = 1;
            ls_config_seconds(&cfg, cfg.options[i].name, &seconds, err, sizeof err);
            ls_closest_word(cfg.options[i].name, known);
        }
        ls_config_check(&cfg, known, err, sizeof err);
        FUZZ_ASSERT(cfg.redacted != NULL);
        FUZZ_ASSERT(cfg.scheme != NULL);
        bool open_it = false;
        for (const char *const *s = openable; *s; s++)
            open_it = open_it || !strcmp(cfg.scheme, *s);
        if (open_it) {
            ls_store *store = ls_store_open(&cfg, err, sizeof err); /* takes cfg over */
            if (store)
                ls_store_unref(store);
            fuzz_drain_loop();
        } else {
            ls_config_free(&cfg);
        }
    } else {
        FUZZ_ASSERT(err[0] != '\0');
        ls_config_free(&cfg);
    }
    free(text);
    return 0;
}
