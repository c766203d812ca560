/* libFuzzer target: the etcd backend (backends/etcd.c) against a "server"
 * the input scripts (spec/fuzz/http_target.c): its replies to lease
 * grants, keepalives, txns and ranges, and the framing and content of the
 * watch stream (newline-free JSON messages split anywhere). */
#include "../../backends/etcd.c"
#include "fake_http.c"

static const char *const fuzz_urls[] = {
    "etcd://127.0.0.1:2379",
    "etcd://127.0.0.1:2379,127.0.0.2:2379,127.0.0.3:2379",
    "etcd://user:secret@127.0.0.1:2379",
    "etcd://127.0.0.1:2379?timeout=1&auth.username=user&auth.password=secret",
    NULL,
};

#include "http_target.c"
