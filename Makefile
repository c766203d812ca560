# make            build/leadership and build/lua (the module for a plain lua5.4)
# make test       every spec (starts its own etcd, ZooKeeper, Redis on 127.0.0.1)
# make demo       three `leadership run` processes on file://, leader killed
# make bench      ours vs docker/leadership on etcd and ZooKeeper (~10 min; BENCH_QUICK=1
#                 and the other knobs in bench/run); prints a table, writes bench/RESULTS.md
# make chaos      five nodes per backend under random faults for CHAOS_SECONDS (120), on
#                 CHAOS_BACKENDS (default: every installed one); prints the history
#                 checker's table, fails on any violation (spec/chaos/run.lua); needs root
#                 for the partition faults (network namespaces)
# BUILD=dir       build somewhere else (helpers building side by side)

BUILD    ?= build
# `make asan test`: AddressSanitizer + UBSan build in build-asan; the plain
# lua5.4 that runs the specs gets the runtime preloaded.
ifneq ($(filter asan,$(MAKECMDGOALS)),)
BUILD        := build-asan
EXTRA_CFLAGS += -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
EXTRA_LDFLAGS += -fsanitize=address,undefined
TEST_ENV     := LD_PRELOAD="$(shell $(CC) -print-file-name=libasan.so) $(shell $(CC) -print-file-name=libubsan.so)" \
                ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
endif
PKGS     := lua5.4 libevent jansson libcurl hiredis
CC       ?= cc
CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu11 -Wall -Wextra -Wno-unused-parameter -fPIC $(shell pkg-config --cflags $(PKGS))
CFLAGS   += $(EXTRA_CFLAGS)
LDLIBS   := $(shell pkg-config --libs $(PKGS)) -lzookeeper_mt -lpthread -lm
LDFLAGS  += $(EXTRA_LDFLAGS)
LUA      ?= lua5.4
BUSTED   ?= $(LUA) /usr/bin/busted

RUNTIME_SRC := $(filter-out runtime/main.c,$(wildcard runtime/*.c))
BACKEND_SRC := $(wildcard backends/*.c)
LIB_OBJ     := $(patsubst %.c,$(BUILD)/obj/%.o,$(RUNTIME_SRC) $(BACKEND_SRC))
LUA_SRC     := $(wildcard lua/leadership/*.lua)

.PHONY: all test demo clean install format asan valgrind-test bench chaos
all: $(BUILD)/leadership $(BUILD)/lua/leadership/core.so $(patsubst lua/%,$(BUILD)/lua/%,$(LUA_SRC))

$(BUILD)/obj/%.o: %.c $(wildcard runtime/*.h backends/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The Lua half of the module, compiled into the executable so it runs
# without an installed module.
$(BUILD)/obj/embedded_lua.c: $(LUA_SRC) runtime/embed.lua
	@mkdir -p $(dir $@)
	$(LUA) runtime/embed.lua $@ $(LUA_SRC)

$(BUILD)/obj/embedded_lua.o: $(BUILD)/obj/embedded_lua.c
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/leadership: $(BUILD)/obj/runtime/main.o $(BUILD)/obj/embedded_lua.o $(LIB_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/lua/leadership/core.so: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -shared -o $@ $^ $(LDLIBS)

$(BUILD)/lua/leadership/%.lua: lua/leadership/%.lua
	@mkdir -p $(dir $@)
	cp $< $@

$(BUILD)/consul-double: spec/support/consul-double.c
	$(CC) $(CFLAGS) -o $@ $< $(shell pkg-config --libs libevent jansson)

# The chaos run's TCP relay into the network namespaces of its nodes.
$(BUILD)/chaos-relay: spec/chaos/relay.c
	$(CC) $(CFLAGS) -o $@ $< $(shell pkg-config --libs libevent)

CHAOS_SECONDS ?= 120
chaos: all $(BUILD)/consul-double $(BUILD)/chaos-relay
	LEADERSHIP_BUILD=$(BUILD) CHAOS_SECONDS=$(CHAOS_SECONDS) CHAOS_BACKENDS=$(CHAOS_BACKENDS) $(LUA) spec/chaos/run.lua

# luarocks calls this with LIBDIR/LUADIR/BINDIR of its tree.
install: all
	install -d $(LIBDIR)/leadership $(LUADIR)/leadership $(BINDIR)
	install -m 755 $(BUILD)/lua/leadership/core.so $(LIBDIR)/leadership/
	install -m 644 $(LUA_SRC) $(LUADIR)/leadership/
	install -m 755 $(BUILD)/leadership $(BINDIR)/

test: all $(BUILD)/consul-double $(BUILD)/chaos-relay
	LEADERSHIP_BUILD=$(BUILD) $(TEST_ENV) $(BUSTED) --helper=spec/support/helper.lua $(SPECS)

SPECS ?= spec

asan:
	@true

# The engine specs with every spawned `leadership` and the plain lua5.4
# under valgrind; any error or definite leak fails.
VALGRIND := valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite --quiet
valgrind-test: all
	LEADERSHIP_BUILD=$(BUILD) $(VALGRIND) $(BUSTED) --helper=spec/support/helper.lua spec/01_engine_spec.lua

demo: all
	LEADERSHIP_BUILD=$(BUILD) examples/demo.sh

# The peer: docker/leadership from Debian's Go sources, GOPATH mode, offline.
PEER_GO := GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH=$(abspath $(BUILD))/gopath:/usr/share/gocode \
           GOCACHE=$(abspath $(BUILD))/gocache go
$(BUILD)/peer-docker-leadership: $(wildcard bench/peers/docker-leadership/*.go)
	$(PEER_GO) build -o $@ ./bench/peers/docker-leadership

bench:
	bench/setup.sh
	$(MAKE) all $(BUILD)/peer-docker-leadership BUILD=$(BUILD)
	LEADERSHIP_BUILD=$(BUILD) $(LUA) bench/run

format:
	clang-format -i runtime/*.c runtime/*.h backends/*.c backends/*.h spec/support/*.c

clean:
	rm -rf $(BUILD)
