/* libFuzzer target: policy files and the flags that override their fields
 * (lua/leadership/policy.lua, its validation and the retry backoff), in an
 * embedded Lua state like the `leadership` executable's.
 *
 * The input builds a policy file that is data only -- "return { ... }"
 * with fields (known or not) set to strings, numbers (inf and nan too),
 * booleans, nested tables or empty functions -- and a table of overrides
 * as the command line passes them (strings). Policy code itself is never
 * generated: a fuzzer writing Lua would mostly fuzz Lua's parser, and
 * could write os.execute. The properties: read() returns a spec or nil and
 * a "policy <file>..." message and never raises; a spec's fields are what
 * validation promises; its retry gives nil or seconds >= 0.
 */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <lualib.h>
#include <unistd.h>

#include "../../runtime/embedded.h"
#include "../../runtime/lua_core.h"
#include "fuzz.h"
#include "sweep.h"

static const char *const fields[] = {
    "store",     "key",   "node",       "ttl",     "renew_deadline",   "mode",
    "value",     "retry", "on_elected", "on_lost", "on_leader_change", "on_error",
    "on_reload", "url",   "initial",    "max",     "factor",           "jitter",
    "attempts",  "tls",   "auth",       "timeout",
};
#define NFIELDS (sizeof fields / sizeof *fields)

static const char check_script[] =
    "local policy = require 'leadership.policy'\n"
    "return function(path, overrides)\n"
    "  local spec, err = policy.read(path, overrides)\n"
    "  if not spec then\n"
    "    assert(type(err) == 'string' and err:find('^policy '), 'not a policy message: ' .. "
    "tostring(err))\n"
    "    return\n"
    "  end\n"
    "  assert(type(spec.store) == 'string', 'store')\n"
    "  assert(type(spec.key) == 'string' and spec.key ~= '', 'key')\n"
    "  assert(type(spec.node) == 'string' and spec.node ~= '' and not "
    "spec.node:find('[\\n\\r%z]'), 'node')\n"
    "  assert(type(spec.ttl) == 'number' and spec.ttl > 0 and spec.ttl < math.huge, 'ttl')\n"
    "  assert(spec.mode == 'candidate' or spec.mode == 'follower', 'mode')\n"
    "  assert(type(spec.value) == 'string' or type(spec.value) == 'table', 'value')\n"
    "  for attempt = 1, 4 do\n"
    "    local ok, d = pcall(spec.retry, attempt, 'error')\n"
    "    assert(ok, 'retry raised: ' .. tostring(d))\n"
    "    assert(d == nil or (math.type(d) and d >= 0), 'retry gave ' .. tostring(d))\n"
    "  end\n"
    "end\n";

/* Coverage of the Lua code for libFuzzer: liblua is not instrumented, so
 * a line hook counts (chunk, line) pairs in libFuzzer's extra counters. */
__attribute__((section("__libfuzzer_extra_counters"))) static uint8_t lua_lines[8192];

/* Runs on every line of Lua: kept out of the sanitizers and coverage, and
 * a chunk's name hashed once while ar->source stays the same pointer (a
 * freed name's address reused by another would only blur coverage). */
__attribute__((no_sanitize("address", "undefined", "coverage"))) static void
line_hook(lua_State *S, lua_Debug *ar)
{
    static const char *last_source;
    static uint32_t last_hash;
    if (!lua_getinfo(S, "S", ar))
        return;
    if (ar->source != last_source) {
        uint32_t h = 2166136261u;
        for (const char *p = ar->source; *p; p++)
            h = (h ^ (uint8_t)*p) * 16777619u;
        last_source = ar->source;
        last_hash = h;
    }
    lua_lines[((last_hash ^ (uint32_t)ar->currentline) * 16777619u) % sizeof lua_lines]++;
}

static lua_State *L;
static int check_ref;
static char path[64];

static int load_embedded(lua_State *S)
{
    const struct ls_embedded_module *m =
        &ls_embedded_modules[lua_tointeger(S, lua_upvalueindex(1))];
    if (luaL_loadbuffer(S, m->source, m->length, m->chunkname) != LUA_OK)
        return lua_error(S);
    lua_pushstring(S, m->name);
    lua_call(S, 1, 1);
    return 1;
}

static void remove_file(void) { unlink(path); }

static void setup_once(void)
{
    if (L)
        return;
    L = luaL_newstate();
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_leadership_core);
    lua_setfield(L, -2, "leadership.core");
    for (int i = 0; ls_embedded_modules[i].name; i++) {
        lua_pushinteger(L, i);
        lua_pushcclosure(L, load_embedded, 1);
        lua_setfield(L, -2, ls_embedded_modules[i].name);
    }
    lua_pop(L, 1);
    FUZZ_ASSERT(luaL_loadstring(L, check_script) == LUA_OK && lua_pcall(L, 0, 1, 0) == LUA_OK);
    lua_sethook(L, line_hook, LUA_MASKLINE, 0);
    check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    fuzz_sweep(base, "leadership-fuzz-policy-");
    snprintf(path, sizeof path, "%s/leadership-fuzz-policy-%d.lua", base, (int)getpid());
    atexit(remove_file);
}

/* ---- building the policy text ---- */

typedef struct text {
    char *s;
    size_t len, cap;
} text;

static void put(text *t, const char *s, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        t->cap = (t->len + n + 1) * 2;
        t->s = realloc(t->s, t->cap);
    }
    memcpy(t->s + t->len, s, n);
    t->len += n;
    t->s[t->len] = '\0';
}

static void puts_(text *t, const char *s) { put(t, s, strlen(s)); }

/* A Lua string literal of any bytes. */
static void put_string(text *t, const char *s, size_t n)
{
    puts_(t, "\"");
    for (size_t i = 0; i < n; i++) {
        char esc[8];
        snprintf(esc, sizeof esc, "\\%03u", (unsigned char)s[i]);
        puts_(t, esc);
    }
    puts_(t, "\"");
}

static void put_value(text *t, fuzz_in *in, int depth);

static void put_key(text *t, fuzz_in *in)
{
    unsigned k = fuzz_byte(in);
    if (k < 200) {
        puts_(t, fields[k % NFIELDS]);
    } else if (k < 240) {
        size_t n;
        const char *s = fuzz_chunk(in, &n);
        puts_(t, "[");
        put_string(t, s, n);
        puts_(t, "]");
    } else {
        char num[32];
        snprintf(num, sizeof num, "[%u]", k - 239);
        puts_(t, num);
    }
}

static void put_table(text *t, fuzz_in *in, int depth)
{
    puts_(t, "{");
    unsigned n = fuzz_byte(in) % 6;
    for (unsigned i = 0; i < n && !fuzz_done(in); i++) {
        put_key(t, in);
        puts_(t, "=");
        put_value(t, in, depth + 1);
        puts_(t, ",");
    }
    puts_(t, "}");
}

static void put_value(text *t, fuzz_in *in, int depth)
{
    char num[64];
    switch (fuzz_byte(in) % 9) {
    case 0: {
        size_t n;
        const char *s = fuzz_chunk(in, &n);
        put_string(t, s, n);
        break;
    }
    case 1: {
        uint64_t bits = fuzz_u64(in, 8);
        double d;
        memcpy(&d, &bits, sizeof d);
        if (d != d)
            puts_(t, "(0/0)");
        else if (d == 1.0 / 0.0)
            puts_(t, "math.huge");
        else if (d == -1.0 / 0.0)
            puts_(t, "-math.huge");
        else {
            snprintf(num, sizeof num, "%.17g", d);
            puts_(t, num);
        }
        break;
    }
    case 2:
        snprintf(num, sizeof num, "%d", (int)(int16_t)fuzz_u64(in, 2));
        puts_(t, num);
        break;
    case 3:
        snprintf(num, sizeof num, "%u.%u", fuzz_byte(in), fuzz_byte(in));
        puts_(t, num);
        break;
    case 4:
        puts_(t, fuzz_byte(in) & 1 ? "true" : "false");
        break;
    case 5:
        if (depth < 3) {
            put_table(t, in, depth);
            break;
        }
        /* fall through */
    case 6:
        puts_(t, "function() end");
        break;
    case 7:
        puts_(t, "setmetatable({}, {__call = function() return 1 end})");
        break;
    default:
        puts_(t, "nil");
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    setup_once();
    fuzz_in in = {data, size};
    text src = {0};
    puts_(&src, "return ");
    put_table(&src, &in, 0);
    puts_(&src, "\n");
    FILE *f = fopen(path, "w");
    FUZZ_ASSERT(f != NULL);
    fwrite(src.s, 1, src.len, f);
    fclose(f);
    free(src.s);

    lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);
    lua_pushstring(L, path);
    /* the flags: strings, as the command line hands them over */
    lua_newtable(L);
    static const char *const flags[] = {"store", "key", "node", "ttl"};
    unsigned mask = fuzz_byte(&in);
    for (int i = 0; i < 4; i++) {
        if (mask & (1u << i)) {
            size_t n;
            const char *s = fuzz_chunk(&in, &n);
            lua_pushlstring(L, s, n);
            lua_setfield(L, -2, flags[i]);
        }
    }
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        fprintf(stderr, "policy check failed: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
    return 0;
}
