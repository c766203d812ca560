# make            build/leadership and build/lua (the module for a plain lua5.4)
# make test       every spec (starts its own etcd, ZooKeeper, Redis on 127.0.0.1)
# make check      what CI runs: make test, then short ASan/UBSan and valgrind runs
# make demo       three `leadership run` processes on file://, leader killed
# make bench      ours vs docker/leadership on etcd and ZooKeeper (~10 min; BENCH_QUICK=1
#                 and the other knobs in bench/run); prints a table, writes bench/RESULTS.md
# make fuzz       libFuzzer (clang) on every parser of outside data (spec/fuzz), FUZZ_SECONDS
#                 (60) per target, or FUZZ_RUNS inputs each; new inputs in build-fuzz/corpus,
#                 crashes in spec/fuzz/crashes (FUZZ_TARGETS=fuzz_etcd ... picks some)
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

.PHONY: all test check demo clean install format asan valgrind-test bench chaos fuzz fuzz-build fuzz-regress
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

# libFuzzer targets: the runtime and backends built again with clang's
# sanitizers; a target #includes the source it reaches into (static
# functions) and may stand in for a library (spec/fuzz/fake_*.c): the
# objects and libraries it replaces are left out of its link.
FUZZ_BUILD   ?= build-fuzz
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_CFLAGS  := -std=gnu11 -Wall -Wextra -Wno-unused-parameter -g -O1 -fno-omit-frame-pointer $(FUZZ_SAN) -fsanitize=fuzzer-no-link \
                $(shell pkg-config --cflags $(PKGS))
FUZZ_OBJ     := $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(RUNTIME_SRC) $(BACKEND_SRC)) \
                $(FUZZ_BUILD)/obj/embedded_lua.o
FUZZ_ALL     := $(patsubst spec/fuzz/%.c,%,$(wildcard spec/fuzz/fuzz_*.c))
FUZZ_TARGETS ?= $(FUZZ_ALL)
FUZZ_OMIT_fuzz_config    := runtime/config
FUZZ_OMIT_fuzz_etcd      := backends/etcd runtime/http
FUZZ_OMIT_fuzz_consul    := backends/consul runtime/http
FUZZ_OMIT_fuzz_zookeeper := backends/zookeeper
FUZZ_LIBS_fuzz_zookeeper := $(filter-out -lzookeeper_mt,$(LDLIBS))
FUZZ_OMIT_fuzz_redis     := backends/redis
FUZZ_OMIT_fuzz_file      := backends/file
# Lua's garbage looks like a leak to libFuzzer's per-input check
FUZZ_ARGS_fuzz_policy    := -detect_leaks=0

$(FUZZ_BUILD)/obj/%.o: %.c $(wildcard runtime/*.h backends/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_BUILD)/obj/embedded_lua.c: $(LUA_SRC) runtime/embed.lua
	@mkdir -p $(dir $@)
	$(LUA) runtime/embed.lua $@ $(LUA_SRC)

$(FUZZ_BUILD)/obj/embedded_lua.o: $(FUZZ_BUILD)/obj/embedded_lua.c
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: spec/fuzz/fuzz_%.c $(wildcard spec/fuzz/*.h spec/fuzz/*.c) $(FUZZ_OBJ) \
                      $(wildcard runtime/*.c backends/*.c)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< \
	  $(filter-out $(patsubst %,$(FUZZ_BUILD)/obj/%.o,$(FUZZ_OMIT_fuzz_$*)),$(FUZZ_OBJ)) \
	  $(or $(FUZZ_LIBS_fuzz_$*),$(LDLIBS))

.SECONDARY: $(FUZZ_OBJ) $(FUZZ_BUILD)/obj/embedded_lua.c
fuzz-build: $(patsubst %,$(FUZZ_BUILD)/%,$(FUZZ_TARGETS))

# Each target on its seeds (spec/fuzz/corpus/<target>), the inputs that
# once crashed it (spec/fuzz/regressions/<target>) and what it found
# before, for FUZZ_SECONDS or FUZZ_RUNS inputs. libFuzzer's output goes to
# $(FUZZ_BUILD)/<target>.log; one line per target says how many inputs ran,
# for how long, on which commit (the record in spec/fuzz/CAMPAIGNS.md).
# ASan keeps no allocation stacks (malloc_context_size=0): the same errors
# are caught ~15% faster; `make fuzz-regress` on a crash gives full stacks.
fuzz: fuzz-build
	@set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t spec/fuzz/corpus/$$t spec/fuzz/crashes; \
	  start=$$(date +%s); rc=0; \
	  ASAN_OPTIONS=$${ASAN_OPTIONS:-malloc_context_size=0} $(FUZZ_BUILD)/$$t -max_total_time=$(FUZZ_SECONDS) $(if $(FUZZ_RUNS),-runs=$(FUZZ_RUNS)) \
	    -print_final_stats=1 -artifact_prefix=spec/fuzz/crashes/$$t- $(FUZZ_ARGS) \
	    $$(case $$t in fuzz_policy) echo $(FUZZ_ARGS_fuzz_policy);; esac) \
	    $(FUZZ_BUILD)/corpus/$$t spec/fuzz/corpus/$$t $$(ls -d spec/fuzz/regressions/$$t 2>/dev/null) \
	    >$(FUZZ_BUILD)/$$t.log 2>&1 || rc=$$?; \
	  echo "fuzz: $$t $$(sed -n 's/^stat::number_of_executed_units: *//p' $(FUZZ_BUILD)/$$t.log) inputs" \
	    "in $$(( $$(date +%s) - start )) s at $$(git describe --always --dirty 2>/dev/null)," \
	    "$$(if [ $$rc = 0 ]; then echo no crash; else echo "FAILED: $(FUZZ_BUILD)/$$t.log"; fi)"; \
	  if [ $$rc != 0 ]; then tail -n 40 $(FUZZ_BUILD)/$$t.log; exit $$rc; fi; \
	done

# Every target once over its seeds and regressions, no fuzzing: a minute
# (spec/91_fuzz_spec.lua does the same when the targets are built).
fuzz-regress: fuzz-build
	@set -e; for t in $(FUZZ_TARGETS); do \
	  $(FUZZ_BUILD)/$$t -runs=0 spec/fuzz/corpus/$$t $$(ls -d spec/fuzz/regressions/$$t 2>/dev/null) \
	    2>&1 | tail -n 1 | sed "s/^/$$t: /"; \
	done

# luarocks calls this with LIBDIR/LUADIR/BINDIR of its tree.
install: all
	install -d $(LIBDIR)/leadership $(LUADIR)/leadership $(BINDIR)
	install -m 755 $(BUILD)/lua/leadership/core.so $(LIBDIR)/leadership/
	install -m 644 $(LUA_SRC) $(LUADIR)/leadership/
	install -m 755 $(BUILD)/leadership $(BINDIR)/

# Every spec; the last line sums busted's up as "tests: N passed, N failed".
test: all $(BUILD)/consul-double $(BUILD)/chaos-relay fuzz-build
	@{ LEADERSHIP_BUILD=$(BUILD) $(TEST_ENV) $(BUSTED) --helper=spec/support/helper.lua $(SPECS); \
	   echo $$? >$(BUILD)/test.status; } 2>&1 | tee $(BUILD)/test.log
	@awk '/successes? \/ .* failures? \/ .* errors? \/ .* pending/ { \
	   print "tests: " $$1 " passed, " $$4 + $$7 " failed, " $$10 " skipped" }' $(BUILD)/test.log | tail -n 1
	@exit $$(cat $(BUILD)/test.status)

# What CI runs (./bootstrap.sh test): every spec, then a short run of the
# core specs under ASan + UBSan, and the engine specs under valgrind.
SANITIZER_SPECS := spec/01_engine_spec.lua spec/03_cli_spec.lua spec/10_file_backend_spec.lua \
                   spec/20_file_processes_spec.lua
check:
	$(MAKE) test
	$(MAKE) asan test SPECS="$(SANITIZER_SPECS)"
	$(MAKE) valgrind-test

SPECS ?= spec

asan:
	@true

# The engine specs with every spawned `leadership` and the plain lua5.4
# under valgrind; any error or definite leak fails.
VALGRIND := valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite --quiet --child-silent-after-fork=yes
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
