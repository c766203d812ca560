#include "log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* A library stays quiet; the executable asks for info. */
static enum ls_log_level log_threshold = LS_WARN;
static bool log_json;
static const char *const log_level_names[] = {"debug", "info", "warn", "error", NULL};

int ls_log_set_level(const char *name)
{
    for (int i = 0; log_level_names[i]; i++) {
        if (!strcmp(name, log_level_names[i])) {
            log_threshold = (enum ls_log_level)i;
            return 0;
        }
    }
    return -1;
}

int ls_log_set_format(const char *name)
{
    if (strcmp(name, "text") && strcmp(name, "json"))
        return -1;
    log_json = !strcmp(name, "json");
    return 0;
}

static void log_timestamp(char *buf, size_t len)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

static void json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

/* Writes one line: the message, then the key/value pairs. */
static void log_line(enum ls_log_level level, const char *message, const char *const *fields,
                     size_t nfields)
{
    char stamp[40];
    log_timestamp(stamp, sizeof stamp);
    flockfile(stderr);
    if (log_json) {
        fprintf(stderr, "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":", stamp,
                log_level_names[level]);
        json_string(stderr, message);
        for (size_t i = 0; i + 1 < nfields; i += 2) {
            fputc(',', stderr);
            json_string(stderr, fields[i]);
            fputc(':', stderr);
            json_string(stderr, fields[i + 1]);
        }
        fputs("}\n", stderr);
    } else {
        fprintf(stderr, "%s %-5s %s", stamp, log_level_names[level], message);
        for (size_t i = 0; i + 1 < nfields; i += 2)
            fprintf(stderr, " %s=%s", fields[i], fields[i + 1]);
        fputc('\n', stderr);
    }
    funlockfile(stderr);
}

void ls_log(enum ls_log_level level, const char *fmt, ...)
{
    if (level < log_threshold)
        return;
    char message[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    log_line(level, message, NULL, 0);
}

void ls_log_event(enum ls_log_level level, const char *event, ...)
{
    if (level < log_threshold)
        return;
    const char *fields[32];
    size_t n = 0;
    va_list ap;
    va_start(ap, event);
    for (const char *s; n < 32 && (s = va_arg(ap, const char *));)
        fields[n++] = s;
    va_end(ap);
    log_line(level, event, fields, n);
}
