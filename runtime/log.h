/* One line per event, as text or JSON, on stderr. Never pass secrets. */
#ifndef LEADERSHIP_LOG_H
#define LEADERSHIP_LOG_H

enum ls_log_level { LS_DEBUG, LS_INFO, LS_WARN, LS_ERROR };

/* Logs one line at `level` if it passes the threshold. */
void ls_log(enum ls_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Logs an event with key/value fields: ls_log_event(LS_INFO, "elected",
 * "key", k, "term", "7", NULL). JSON mode makes them object members. */
void ls_log_event(enum ls_log_level level, const char *event, ...);

/* "debug" "info" "warn" "error"; -1 if unknown. */
int ls_log_set_level(const char *name);
/* "text" or "json"; -1 if unknown. */
int ls_log_set_format(const char *name);

#endif
