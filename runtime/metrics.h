/* --metrics ADDR:PORT: an HTTP server on the loop (libevent's evhttp) with
 * /metrics in the Prometheus text format and /healthz. */
#ifndef LEADERSHIP_METRICS_H
#define LEADERSHIP_METRICS_H

#include <lua.h>

/* leadership.metrics("ADDR:PORT") -> server | nil, err. ADDR may be
 * empty (every interface) or [v6]; port 0 picks a free one. Methods:
 * add(election, node) labels and serves an election; address() -> the
 * bound "ADDR:PORT"; close(). It does not keep leadership.run() going.
 *   [-1, +(1|2), e] */
int ls_lua_metrics_new(lua_State *L);

#endif
