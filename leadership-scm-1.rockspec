rockspec_format = "3.0"
package = "leadership"
version = "scm-1"
source = {
  url = "git+file://./leadership",
}
description = {
  summary = "Leader election for clustered services: a C runtime on libevent with a Lua face",
  detailed = [[
    Candidates and followers on etcd, ZooKeeper, Consul, Redis, a local
    file store or memory, with a local deadline, fencing terms, fair
    queues and backoff; what a process does when elected is a Lua policy.
  ]],
  license = "Apache-2.0",
}
dependencies = {
  "lua >= 5.4, < 5.5",
  "lua-cjson",
}
-- C libraries are found by the Makefile through pkg-config (Debian keeps
-- some headers under multiarch paths luarocks does not search).
build = {
  type = "make",
  build_variables = {
    LUA = "$(LUA)",
  },
  install_variables = {
    LIBDIR = "$(LIBDIR)",
    LUADIR = "$(LUADIR)",
    BINDIR = "$(BINDIR)",
  },
}
