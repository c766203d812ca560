#include "config.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *dup_range(const char *start, size_t len)
{
    char *s = malloc(len + 1);
    memcpy(s, start, len);
    s[len] = '\0';
    return s;
}

static int hex_digit(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decodes in place; -1 on a broken escape or an embedded NUL. */
static int percent_decode(char *s)
{
    char *out = s;
    for (char *in = s; *in; in++) {
        if (*in == '%') {
            int hi = hex_digit(in[1]), lo = hi < 0 ? -1 : hex_digit(in[2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return -1;
            *out++ = (char)(hi * 16 + lo);
            in += 2;
        } else {
            *out++ = *in == '+' ? ' ' : *in;
        }
    }
    *out = '\0';
    return 0;
}

static int default_port(const char *scheme)
{
    if (!strcmp(scheme, "etcd"))
        return 2379;
    if (!strcmp(scheme, "zk"))
        return 2181;
    if (!strcmp(scheme, "consul"))
        return 8500;
    if (!strcmp(scheme, "redis"))
        return 6379;
    return 0;
}

/* Checks "host[:port]" and stores it as "host:port". */
static int add_host(ls_store_config *cfg, const char *start, size_t len, char *err, size_t errlen)
{
    char *host = dup_range(start, len);
    char *colon = host[0] == '[' ? strstr(host, "]:") : strrchr(host, ':');
    if (colon && host[0] == '[')
        colon++;
    long port = default_port(cfg->scheme);
    if (colon) {
        char *end;
        port = strtol(colon + 1, &end, 10);
        if (colon[1] == '\0' || *end != '\0' || port < 1 || port > 65535) {
            snprintf(err, errlen, "bad port '%s' in store URL '%s' (want 1-65535)", colon + 1,
                     cfg->redacted);
            free(host);
            return -1;
        }
        *colon = '\0';
    }
    bool bracketed = host[0] == '[';
    /* every backend splits "host:port" at its last ':', so the port must
     * survive the copy below: no host is longer than a DNS name anyway */
    if (strlen(host) > 255) {
        snprintf(err, errlen, "host name too long (%zu bytes) in store URL '%.200s'", strlen(host),
                 cfg->redacted);
        free(host);
        return -1;
    }
    if (host[0] == '\0' || strpbrk(host, "/?#@ ") || (!bracketed && strchr(host, ':'))) {
        snprintf(err, errlen, "bad host '%s' in store URL '%s'", host, cfg->redacted);
        free(host);
        return -1;
    }
    char buf[300];
    snprintf(buf, sizeof buf, "%s:%ld", host, port);
    free(host);
    cfg->hosts = realloc(cfg->hosts, (cfg->nhosts + 1) * sizeof *cfg->hosts);
    cfg->hosts[cfg->nhosts++] = strdup(buf);
    return 0;
}

/* Replaces, in place, the values of query parameters that carry secrets
 * (consul://h:p?token=...) with "***" (short ones with as many '*'), so
 * the URL shown in messages and tostring(store) holds no secret. */
static void redact_query(char *url)
{
    static const char *const secret[] = {"token", "password", "auth.password", NULL};
    char *q = strchr(url, '?');
    while (q) {
        char *name = q + 1, *eq = strchr(name, '='), *end = name + strcspn(name, "&#");
        q = *end == '&' ? end : NULL;
        if (!eq || eq > end)
            continue;
        bool hide = false;
        for (const char *const *n = secret; *n; n++)
            hide = hide || ((size_t)(eq - name) == strlen(*n) && !strncmp(name, *n, strlen(*n)));
        size_t vlen = (size_t)(end - eq - 1);
        if (!hide || vlen == 0)
            continue;
        if (vlen <= 3) {
            memset(eq + 1, '*', vlen);
        } else {
            memcpy(eq + 1, "***", 3);
            memmove(eq + 4, end, strlen(end) + 1);
            if (q)
                q = eq + 4;
        }
    }
}

/* The URL with the password part of userinfo and secret query values
 * replaced by "***". */
static char *redact(const char *url)
{
    const char *sep = strstr(url, "://");
    const char *authority = sep ? sep + 3 : url;
    const char *slash = strpbrk(authority, "/?");
    /* the last '@' of the authority ends the userinfo, as ls_config_parse
     * splits it: a password may hold an unescaped '@' */
    const char *at = NULL;
    for (const char *p = authority; *p && p != slash; p++)
        if (*p == '@')
            at = p;
    char *out;
    if (!at) {
        out = strdup(url);
    } else {
        const char *colon = memchr(authority, ':', (size_t)(at - authority));
        size_t keep = (size_t)((colon ? colon : at) - url);
        size_t len = keep + 4 + strlen(at) + 1;
        out = malloc(len);
        snprintf(out, len, "%.*s:***%s", (int)keep, url, at);
    }
    redact_query(out);
    return out;
}

static int parse_query(ls_store_config *cfg, char *query, char *err, size_t errlen)
{
    for (char *pair = strtok(query, "&"); pair; pair = strtok(NULL, "&")) {
        char *eq = strchr(pair, '=');
        if (!eq || eq == pair) {
            snprintf(err, errlen, "bad query parameter '%s' in store URL '%s' (want name=value)",
                     pair, cfg->redacted);
            return -1;
        }
        *eq = '\0';
        if (percent_decode(pair) < 0 || percent_decode(eq + 1) < 0) {
            snprintf(err, errlen, "bad %%-escape in query parameter '%s' of store URL '%s'", pair,
                     cfg->redacted);
            return -1;
        }
        ls_config_set(cfg, pair, eq + 1);
    }
    return 0;
}

int ls_config_parse(ls_store_config *cfg, const char *url, char *err, size_t errlen)
{
    cfg->timeout = 5;
    cfg->redacted = redact(url);
    const char *sep = strstr(url, "://");
    if (!sep || sep == url) {
        snprintf(err, errlen,
                 "malformed store URL '%s' (want scheme://..., e.g. etcd://127.0.0.1:2379)",
                 cfg->redacted);
        return -1;
    }
    cfg->scheme = dup_range(url, (size_t)(sep - url));
    for (char *c = cfg->scheme; *c; c++) {
        if (!isalnum((unsigned char)*c) && *c != '+' && *c != '-' && *c != '.') {
            snprintf(err, errlen, "malformed store URL '%s': bad scheme", cfg->redacted);
            return -1;
        }
    }
    char *rest = strdup(sep + 3);
    char *query = strchr(rest, '?');
    int rc = -1;
    if (query) {
        *query++ = '\0';
        if (parse_query(cfg, query, err, errlen) < 0)
            goto out;
    }
    if (strchr(rest, '#')) {
        snprintf(err, errlen, "malformed store URL '%s': fragments ('#') are not allowed",
                 cfg->redacted);
        goto out;
    }
    if (!strcmp(cfg->scheme, "file")) {
        if (rest[0] != '/' || rest[1] == '\0') {
            snprintf(err, errlen, "file store URL '%s' needs an absolute directory: file:///dir",
                     cfg->redacted);
            goto out;
        }
        cfg->path = strdup(rest);
        if (percent_decode(cfg->path) < 0) {
            snprintf(err, errlen, "bad %%-escape in store URL '%s'", cfg->redacted);
            goto out;
        }
        rc = 0;
        goto out;
    }
    if (!strcmp(cfg->scheme, "memory")) {
        if (rest[0] == '\0' || strchr(rest, '/')) {
            snprintf(err, errlen, "memory store URL '%s' needs a name: memory://name",
                     cfg->redacted);
            goto out;
        }
        cfg->path = strdup(rest);
        rc = 0;
        goto out;
    }
    char *slash = strchr(rest, '/');
    if (slash) {
        cfg->path = strdup(slash);
        *slash = '\0';
    }
    char *hosts = rest;
    char *at = strrchr(rest, '@');
    if (at) {
        *at = '\0';
        cfg->userinfo = strdup(rest);
        if (percent_decode(cfg->userinfo) < 0) {
            snprintf(err, errlen, "bad %%-escape in the credentials of store URL '%s'",
                     cfg->redacted);
            goto out;
        }
        hosts = at + 1;
    }
    if (hosts[0] == '\0') {
        snprintf(err, errlen, "store URL '%s' names no host (want %s://host:port)", cfg->redacted,
                 cfg->scheme);
        goto out;
    }
    for (char *h = hosts;;) {
        char *comma = strchr(h, ',');
        size_t len = comma ? (size_t)(comma - h) : strlen(h);
        if (add_host(cfg, h, len, err, errlen) < 0)
            goto out;
        if (!comma)
            break;
        h = comma + 1;
    }
    rc = 0;
out:
    free(rest);
    return rc == 0 ? ls_config_timeout(cfg, err, errlen) : rc;
}

int ls_config_timeout(ls_store_config *cfg, char *err, size_t errlen)
{
    if (ls_config_seconds(cfg, "timeout", &cfg->timeout, err, errlen) < 0)
        return -1;
    if (cfg->timeout <= 0 || cfg->timeout > 3600) {
        snprintf(err, errlen, "store option 'timeout' must be in (0, 3600] seconds");
        return -1;
    }
    return 0;
}

void ls_config_set(ls_store_config *cfg, const char *name, const char *value)
{
    for (size_t i = 0; i < cfg->noptions; i++) {
        if (!strcmp(cfg->options[i].name, name)) {
            free(cfg->options[i].value);
            cfg->options[i].value = strdup(value);
            return;
        }
    }
    cfg->options = realloc(cfg->options, (cfg->noptions + 1) * sizeof *cfg->options);
    cfg->options[cfg->noptions].name = strdup(name);
    cfg->options[cfg->noptions].value = strdup(value);
    cfg->noptions++;
}

const char *ls_config_get(const ls_store_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->noptions; i++)
        if (!strcmp(cfg->options[i].name, name))
            return cfg->options[i].value;
    return NULL;
}

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return 99;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            size_t best = diag + cost;
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

const char *ls_closest_word(const char *word, const char *const *words)
{
    const char *best = NULL;
    size_t best_distance = strlen(word) / 3 + 2; /* closer than this, or no hint */
    for (; *words; words++) {
        size_t d = edit_distance(word, *words);
        if (d < best_distance) {
            best_distance = d;
            best = *words;
        }
    }
    return best;
}

int ls_config_check(const ls_store_config *cfg, const char *const *known, char *err, size_t errlen)
{
    for (size_t i = 0; i < cfg->noptions; i++) {
        const char *name = cfg->options[i].name;
        bool ok = !strcmp(name, "timeout");
        for (const char *const *k = known; !ok && *k; k++)
            ok = !strcmp(name, *k);
        if (ok)
            continue;
        const char *hint = ls_closest_word(name, known);
        if (hint)
            snprintf(err, errlen, "unknown option '%s' for the %s store (did you mean '%s'?)", name,
                     cfg->scheme, hint);
        else
            snprintf(err, errlen, "unknown option '%s' for the %s store", name, cfg->scheme);
        return -1;
    }
    return 0;
}

int ls_config_seconds(const ls_store_config *cfg, const char *name, double *out, char *err,
                      size_t errlen)
{
    const char *text = ls_config_get(cfg, name);
    if (!text)
        return 0;
    char *end;
    double v = strtod(text, &end);
    double scale = 1;
    if (!strcmp(end, "ms"))
        scale = 0.001;
    else if (!strcmp(end, "m"))
        scale = 60;
    else if (*end != '\0' && strcmp(end, "s"))
        end = (char *)text;
    if (end == text || v < 0 || v != v) {
        snprintf(err, errlen,
                 "store option '%s' must be a duration in seconds (e.g. 5, 0.5, 250ms), got '%s'",
                 name, text);
        return -1;
    }
    *out = v * scale;
    return 0;
}

void ls_config_free(ls_store_config *cfg)
{
    free(cfg->scheme);
    free(cfg->userinfo);
    for (size_t i = 0; i < cfg->nhosts; i++)
        free(cfg->hosts[i]);
    free(cfg->hosts);
    free(cfg->path);
    free(cfg->redacted);
    for (size_t i = 0; i < cfg->noptions; i++) {
        free(cfg->options[i].name);
        free(cfg->options[i].value);
    }
    free(cfg->options);
}
