/* libFuzzer target: the Consul backend (backends/consul.c) against an
 * agent the input scripts (spec/fuzz/http_target.c): its answers to
 * session create/renew/destroy, KV reads (blocking, with X-Consul-Index),
 * acquires and releases. */
#include "../../backends/consul.c"
#include "fake_http.c"

static const char *const fuzz_urls[] = {
    "consul://127.0.0.1:8500?lock_delay=0s",
    "consul://127.0.0.1:8500,127.0.0.2:8500?behavior=delete&token=secret",
    "consul://127.0.0.1:8500?wait=5s&lock_delay=1s&dc=east",
    NULL,
};

#include "http_target.c"
