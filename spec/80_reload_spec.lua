-- Hot reload: leadership.watch_file (inotify, debounced), a policy's
-- :reload() in one process on memory://, and `leadership run` processes
-- reloading their policy file on file:// and etcd while one of them leads.
local L = require "leadership"
local Rec = require "record"

local function write(path, text) H.write(path, text) end

local count, index_of = Rec.count, Rec.find

local function loop_until(fn, timeout) return Rec.loop_until(fn, timeout, 0.005) end

local function last_index(list, pattern)
  for i = #list, 1, -1 do if list[i]:match(pattern) then return i end end
end

local expect_nothing_alive = Rec.nothing_alive

describe("leadership.watch_file", function()
  local dir, path, calls, at
  before_each(function()
    dir = H.tmpdir("watch")
    path = dir .. "/policy.lua"
    write(path, "return {}\n")
    calls, at = {}, {}
  end)
  after_each(function()
    L.watch_file(path, nil)
    os.execute("rm -rf " .. H.quote(dir))
    expect_nothing_alive()
  end)

  local function watch(quiet)
    assert(L.watch_file(path, function(p)
      calls[#calls + 1] = p
      at[#at + 1] = L.now()
    end, quiet))
  end

  it("does not hold the loop: run() returns at once while watching", function()
    watch()
    assert.equal(0, L.live().holds)
    local t0 = L.now()
    assert.is_true(L.run(5))
    assert.is_true(L.now() - t0 < 0.5)
  end)

  it("gives one call for a burst of writes, after the quiet period", function()
    watch(0.1)
    local last
    for i = 1, 20 do
      write(path, ("return { n = %d }\n"):format(i))
      last = L.now()
      L.sleep(0.005)
    end
    L.sleep(0.4)
    assert.same({ path }, calls)
    assert.is_true(at[1] - last >= 0.09, ("called %.3f s after the last write"):format(at[1] - last))
  end)

  it("catches an editor-style save: a new file renamed over the old one", function()
    watch()
    write(dir .. "/.policy.lua.swp", "return { saved = true }\n")
    os.rename(dir .. "/.policy.lua.swp", path)
    assert.truthy(loop_until(function() return #calls == 1 end, 2))
    -- the watch survives the inode change: the next save is caught too
    write(dir .. "/policy.lua.tmp", "return { again = true }\n")
    os.rename(dir .. "/policy.lua.tmp", path)
    assert.truthy(loop_until(function() return #calls == 2 end, 2))
  end)

  it("catches a file deleted and written anew (vim without backupcopy)", function()
    watch()
    os.rename(path, path .. "~")
    write(path, "return { fresh = true }\n")
    assert.truthy(loop_until(function() return #calls == 1 end, 2))
  end)

  it("waits for a slow writer to close the file", function()
    watch(0.3)
    local f = assert(io.open(path, "w"))
    for i = 1, 5 do
      f:write("-- part ", i, "\n")
      f:flush()
      L.sleep(0.06) -- each gap is well within the quiet period
    end
    local closed = L.now()
    f:close()
    L.sleep(0.8)
    assert.equal(1, #calls)
    assert.is_true(at[1] >= closed)
  end)

  it("ignores other files in the same directory", function()
    watch()
    write(dir .. "/other.lua", "x")
    write(dir .. "/policy.lua.bak", "x")
    os.rename(dir .. "/other.lua", dir .. "/moved.lua")
    L.sleep(0.3)
    assert.same({}, calls)
  end)

  it("stops with nil, and a new fn replaces the old one", function()
    watch()
    local second = 0
    assert(L.watch_file(path, function() second = second + 1 end))
    write(path, "return { 1 }")
    assert.truthy(loop_until(function() return second == 1 end, 2))
    assert.same({}, calls)
    assert.is_true(L.watch_file(path, nil))
    write(path, "return { 2 }")
    L.sleep(0.3)
    assert.equal(1, second)
  end)

  it("runs fn as a handler: it may sleep, and one that raises is logged, the watch goes on", function()
    local n, slept = 0, false
    assert(L.watch_file(path, setmetatable({}, { __call = function()
      n = n + 1
      if n == 1 then error({ "not a string" }) end
      L.sleep(0.01)
      slept = true
    end })))
    write(path, "a")
    assert.truthy(loop_until(function() return n == 1 end, 2))
    write(path, "b")
    assert.truthy(loop_until(function() return slept end, 2))
  end)

  it("returns nil and a message for a directory it cannot watch; raises on bad arguments", function()
    local ok, err = L.watch_file(dir .. "/missing/policy.lua", print)
    assert.is_nil(ok)
    assert.matches("cannot watch directory '.*/missing': No such file or directory", err)
    assert.has_error(function() L.watch_file(dir .. "/", print) end)
    assert.has_error(function() L.watch_file(path, 42) end)
    assert.has_error(function() L.watch_file(path, print, -1) end)
    assert.has_error(function() L.watch_file("", print) end)
  end)
end)

-- What the in-process policies write to: a module both the spec and the
-- policy's fresh environment can reach.
local probe = { log = {} }
package.loaded["reload_probe"] = probe

-- A policy on memory:// whose leader work leaves "stamp <version> <term>"
-- lines in probe.log, and "closed <version>" when its coroutine is closed.
local function memory_policy(o)
  return ([[
local probe = require "reload_probe"
local V = %q
return {
  store = %q, key = %q, node = %q, ttl = 1,
  on_elected = function(ctx)
    local guard <close> = setmetatable({}, { __close = function() probe.log[#probe.log + 1] = "closed " .. V end })
    probe.log[#probe.log + 1] = ("start %%s %%d %%s"):format(V, ctx.term, tostring(ctx.reloaded))
    while true do
      local x = 0
      for i = 1, 20000 do x = x + i %% 7 end -- load: some work every tick
      probe.log[#probe.log + 1] = ("stamp %%s %%d"):format(V, ctx.term)
      ctx.sleep(0.002)
    end
  end,
  on_lost = function(ctx, reason) probe.log[#probe.log + 1] = "lost " .. V .. " " .. reason end,
  on_error = function(ctx, err) probe.log[#probe.log + 1] = "error " .. V .. " " .. tostring(err) end,
  %s
}
]]):format(o.version, o.store, o.key or "reload/leader", o.node or "a", o.extra or "")
end

-- The versions of the stamps in log order must never go back: no stamp of
-- the old code after the first of the new.
local function versions_in_order(log, order)
  local rank = {}
  for i, v in ipairs(order) do rank[v] = i end
  local highest, highest_v = 0, nil
  for i, line in ipairs(log) do
    local v = line:match("^stamp (%S+)")
    if v then
      assert.truthy(rank[v], "unknown version " .. v)
      if rank[v] < highest then
        return ("line %d: a stamp of %s after one of %s"):format(i, v, highest_v)
      end
      highest, highest_v = rank[v], v
    end
  end
end

describe("policy:reload() on memory://", function()
  local dir, path, store_url, policy, rival
  local store_count = 0
  before_each(function()
    store_count = store_count + 1
    store_url = "memory://reload-" .. store_count
    dir = H.tmpdir("reload")
    path = dir .. "/policy.lua"
    probe.log = {}
  end)
  after_each(function()
    if policy then policy:stop() end
    if rival then rival:stop() end
    policy, rival = nil, nil
    os.execute("rm -rf " .. H.quote(dir))
    expect_nothing_alive()
  end)

  local function start(version, extra)
    write(path, memory_policy { version = version, store = store_url, extra = extra })
    policy = L.policy(path)
    policy:start()
    -- its work has begun (a task spawned but not yet started is cancelled
    -- by a reload without ever running: nothing to close)
    assert.truthy(loop_until(function() return index_of(probe.log, "^stamp " .. version) end, 2))
    assert.is_true(policy.election:is_leader())
    return policy.election:term()
  end

  -- A second candidate on the same key: it must never be elected.
  local function start_rival()
    local store = assert(L.store(store_url))
    rival = L.candidate(store, "reload/leader", "b", { ttl = 1 })
    rival.on_elected = function() probe.log[#probe.log + 1] = "rival elected" end
    rival:run()
  end

  local function has(pattern) return index_of(probe.log, pattern) end

  it("reloads 20 times in a row under load: same term, nobody else elected, old code never after new", function()
    local term = start("v0")
    start_rival()
    local order = { "v0" }
    for i = 1, 20 do
      local v = "v" .. i
      order[#order + 1] = v
      write(path, memory_policy { version = v, store = store_url })
      local ok, restart = policy:reload()
      assert.is_true(ok)
      assert.same({}, restart)
      assert.truthy(loop_until(function() return has("^stamp " .. v .. " ") end, 2), v)
      -- the old coroutine was closed before the new one started
      local closed, started = has("^closed v" .. (i - 1) .. "$"), has("^start " .. v .. " ")
      assert.truthy(closed and started and closed < started, v .. " closed " .. tostring(closed) .. " started " .. tostring(started) .. "\n" .. table.concat(probe.log, "\n"))
      assert.equal("start " .. v .. " " .. term .. " true", probe.log[started])
    end
    L.sleep(0.05)
    assert.is_true(policy.election:is_leader())
    assert.equal(term, policy.election:term())
    assert.is_nil(has("^rival elected"))
    assert.is_nil(has("^lost "))
    assert.is_nil(versions_in_order(probe.log, order))
    assert.equal(21, count(probe.log, "^start "))
    assert.equal(20, count(probe.log, "^closed "))
  end)

  it("keeps leading with the old code on a broken edit, and says file and line", function()
    local term = start("v1")
    local broken = {
      { "syntax error", "return {\n  key = \"k\",\n  ttl = = 2,\n}\n", ":3: unexpected symbol near '='" },
      { "runtime error", "local x = 1\nerror(\"boom\")\nreturn {}\n", ":2: boom$" },
      { "error in a library", "local cjson = require 'cjson'\n\ncjson.decode('{')\nreturn {}\n", ":3: .*Expected" },
      { "not a table", "local t = {}\nreturn 42\n", ":2: must return a table, got number$" },
      { "bad field", memory_policy { version = "bad", store = store_url }:gsub("ttl = 1", "ttl = \"soon\""),
        ":4: ttl must be a number of seconds, got 'soon'$" },
      { "bad handler", "return {\n  store = 'memory://x', key = 'k',\n  on_elected = 5,\n}\n",
        ":3: on_elected must be a function, got number$" },
      { "unknown field", "return {\n  store = 'memory://x', key = 'k',\n  on_elcted = print,\n}\n",
        ":3: unknown field 'on_elcted' %(did you mean 'on_elected'%?%)$" },
    }
    for _, case in ipairs(broken) do
      local name, text, expected = case[1], case[2], case[3]
      write(path, text)
      local errors_before = count(probe.log, "^error ")
      local ok, err = policy:reload()
      assert.is_nil(ok, name)
      assert.matches("^policy " .. path:gsub("%p", "%%%0") .. expected, err, nil, false, name)
      -- the running (old) policy's on_error got the same message
      assert.equal(errors_before + 1, count(probe.log, "^error "), name)
      assert.equal("error v1 " .. err, probe.log[last_index(probe.log, "^error ")], name)
      local n = #probe.log
      assert.truthy(loop_until(function() return index_of(probe.log, "^stamp v1 ", n + 1) end, 1), name)
    end
    assert.is_nil(has("^closed "))
    assert.equal(1, count(probe.log, "^start "))
    assert.is_true(policy.election:is_leader())
    assert.equal(term, policy.election:term())
  end)

  it("refuses a changed key with needs restart, and reloads the rest", function()
    local term = start("v1")
    local text = memory_policy { version = "v2", store = store_url, key = "reload/elsewhere" }
    write(path, text)
    local ok, restart = policy:reload()
    assert.is_true(ok)
    assert.same({ "key" }, restart)
    assert.equal("reload/leader", policy.election:key())
    assert.truthy(loop_until(function() return has("^stamp v2 " .. term .. "$") end, 1))
    assert.equal(term, policy.election:term())
    -- every election-shaping field is reported, none applied
    write(path, memory_policy { version = "v3", store = "memory://elsewhere", key = "other", node = "z" }
      :gsub("ttl = 1", "ttl = 3, mode = 'follower'"))
    ok, restart = policy:reload()
    assert.is_true(ok)
    assert.same({ "store", "key", "node", "ttl", "mode", "value" }, restart)
    assert.truthy(loop_until(function() return has("^stamp v3 " .. term .. "$") end, 1))
    assert.is_true(policy.election:is_leader())
    assert.equal("a", policy.spec.node)
  end)

  it("runs the new on_reload instead of on_elected when the policy has one", function()
    local term = start("v1")
    write(path, memory_policy { version = "v2", store = store_url, extra = [[
  on_reload = function(ctx)
    probe.log[#probe.log + 1] = ("on_reload %d %s %s"):format(ctx.term, tostring(ctx.reloaded), tostring(ctx.is_leader()))
  end,]] })
    assert.is_true(policy:reload())
    assert.truthy(loop_until(function() return has("^on_reload ") end, 1))
    assert.equal("on_reload " .. term .. " true true", probe.log[has("^on_reload ")])
    assert.truthy(has("^closed v1$"))
    assert.is_nil(has("^start v2"))
  end)

  it("on a node that does not lead, swaps the handlers and runs nothing until elected", function()
    start_rival()
    assert.truthy(loop_until(function() return has("^rival elected") end, 1))
    write(path, memory_policy { version = "v1", store = store_url })
    policy = L.policy(path)
    policy:start()
    L.sleep(0.05)
    write(path, memory_policy { version = "v2", store = store_url })
    assert.is_true(policy:reload())
    L.sleep(0.05)
    assert.is_nil(has("^start "))
    rival:stop()
    assert.truthy(loop_until(function() return has("^start v2 ") end, 2))
    assert.matches("^start v2 %d+ false$", probe.log[has("^start v2 ")])
    assert.is_nil(has("v1"))
  end)

  it("with if_changed leaves an unchanged file alone; a plain reload restarts the work", function()
    local term = start("v1")
    assert.is_true(policy:reload { if_changed = true })
    L.sleep(0.05)
    assert.equal(1, count(probe.log, "^start "))
    assert.is_true(policy:reload())
    assert.truthy(loop_until(function() return count(probe.log, "^start v1 " .. term .. " true") == 1 end, 1))
  end)

  it("reloads through watch_file: an editor's rename is caught, a burst gives one reload", function()
    start("v1")
    local reloads = 0
    assert(L.watch_file(path, function()
      reloads = reloads + 1
      policy:reload { if_changed = true }
    end))
    local tmp = dir .. "/.policy.lua.new"
    write(tmp, memory_policy { version = "v2", store = store_url })
    os.rename(tmp, path)
    assert.truthy(loop_until(function() return has("^stamp v2 ") end, 2))
    assert.equal(1, reloads)
    for i = 3, 12 do
      write(path, memory_policy { version = "v" .. i, store = store_url })
      L.sleep(0.01)
    end
    assert.truthy(loop_until(function() return has("^stamp v12 ") end, 2))
    L.sleep(0.3)
    assert.equal(2, reloads)
    assert.equal(3, count(probe.log, "^start "))
    assert.is_nil(has("^start v[3-9] ") or has("^start v1[01] "))
    L.watch_file(path, nil)
  end)
end)

-- The policy every `leadership run` node runs: one file, edited by the
-- specs. While leader it appends "<wall time> <node> <term> <version>" to
-- $STAMP_FILE every 10 ms, after about a millisecond of work each tick.
local function process_policy(o)
  return ([[
local leadership = require "leadership"
local V = %q
local stamps = os.getenv("STAMP_FILE")
local function say(...)
  io.stdout:write(table.concat({ ... }, " "), "\n")
  io.stdout:flush()
end
return {
  store = %q, key = %q, ttl = %s,
  retry = { initial = 0.1, max = 1, factor = 2, jitter = 0.2 },
  on_elected = function(ctx)
    say("elected", ctx.term, V, tostring(ctx.reloaded))
    while true do
      local x = 0
      for i = 1, 30000 do x = x + i %% 7 end
      local f = assert(io.open(stamps, "a"))
      f:write(("%%.6f %%s %%d %%s\n"):format(leadership.time(), ctx.node, ctx.term, V))
      f:close()
      ctx.sleep(0.01)
    end
  end,
  on_lost = function(_, reason) say("lost", reason, V) end,
  on_error = function(_, err) say("error", V, (tostring(err):gsub("\n", " "))) end,
}
]]):format(o.version, o.store, o.key, tostring(o.ttl))
end

local function median(list)
  local s = {}
  for i, v in ipairs(list) do s[i] = v end
  table.sort(s)
  return s[(#s + 1) // 2]
end

-- Three nodes on one store and one policy file; node 1 is elected first
-- and must lead throughout, under one term, whatever the edits.
local function describe_processes(backend, have, make_store, stop_store)
  describe(backend .. ": `leadership run` reloading its policy file", function()
    if not have then return end
    local dir, path, stamp_file, store, key, term
    local procs = {}
    local ttl = 2

    local function policy(version, changes)
      local text = process_policy { version = version, store = store, key = key, ttl = ttl }
      for from, to in pairs(changes or {}) do text = text:gsub(from, to) end
      return text
    end
    local function lines(i, stream)
      local out = {}
      for line in (H.read(procs[i][stream or "stdout"]) or ""):gmatch("[^\n]+") do out[#out + 1] = line end
      return out
    end
    local function reloads(i) return count(lines(i, "stderr"), "policy .* reloaded$") end
    local function dump()
      local parts = {}
      for i = 1, #procs do
        parts[#parts + 1] = ("--- n%d\n%s%s"):format(i, H.read(procs[i].stdout) or "", H.read(procs[i].stderr) or "")
      end
      return table.concat(parts, "\n")
    end
    local function read_stamps()
      local list = {}
      for line in (H.read(stamp_file) or ""):gmatch("[^\n]+") do
        local t, node, tm, v = line:match("^([%d.]+) (%S+) (%d+) (%S+)$")
        if t then list[#list + 1] = { t = tonumber(t), node = node, term = tonumber(tm), v = v } end
      end
      return list
    end
    -- The first stamp of `version`, waited for.
    local function first_stamp(version, timeout)
      return H.wait_until(function()
        for _, s in ipairs(read_stamps()) do if s.v == version then return s end end
      end, timeout or 5, 0.01)
    end
    -- n1 led all along under one term, nobody else was elected, and the
    -- stamps' versions never go back.
    local function check_history()
      local rank, highest = {}, 0
      for _, s in ipairs(read_stamps()) do
        assert.equal("n1", s.node)
        assert.equal(term, s.term)
        local r = tonumber(s.v:match("^v(%d+)$"))
        assert.truthy(r, s.v)
        assert.is_true(r >= highest, ("a stamp of v%d after one of v%d"):format(r, highest))
        highest = r
      end
      for _, line in ipairs(lines(1)) do
        assert.is_nil(line:match("^lost"), dump())
        local t = line:match("^elected (%d+)")
        if t then assert.equal(term, tonumber(t)) end
      end
      for i = 2, 3 do
        assert.equal(0, count(lines(i), "^elected"), dump())
        assert.is_true(H.alive(procs[i]))
      end
      assert.is_true(H.alive(procs[1]))
    end

    lazy_setup(function()
      dir = H.tmpdir("reload-run")
      path, stamp_file = dir .. "/policy.lua", dir .. "/stamps"
      store, key = make_store(), "spec/reload/" .. math.random(1e9)
      write(path, policy("v1"))
      for i = 1, 3 do
        procs[i] = H.spawn({ H.bin, "run", path, "--node", "n" .. i }, {
          env = { STAMP_FILE = stamp_file }, dir = dir,
          stdout = dir .. "/n" .. i .. ".out", stderr = dir .. "/n" .. i .. ".err",
        })
        if i == 1 then
          local first = first_stamp("v1", 10)
          assert.truthy(first, dump())
          term = first.term
        end
      end
      os.execute("sleep 0.3") -- the others are campaigning
    end)

    lazy_teardown(function()
      for _, proc in ipairs(procs) do H.stop(proc) end
      if stop_store then stop_store() end
      if dir then os.execute("rm -rf " .. H.quote(dir)) end
    end)

    it("reloads 20 times in a row under load: one term, nobody else elected, no old stamp after a new one", function()
      local latencies = {}
      for v = 2, 21 do
        local written = L.time()
        write(path, policy("v" .. v))
        local first = first_stamp("v" .. v)
        assert.truthy(first, "v" .. v .. "\n" .. dump())
        latencies[#latencies + 1] = first.t - written
      end
      os.execute("sleep 0.1")
      check_history()
      assert.equal(20, reloads(1), dump())
      -- the others reload too, though an edit that comes within their quiet
      -- period (the leader's new stamp is all this waits for) joins the next
      for i = 2, 3 do assert.is_true(reloads(i) >= 10, dump()) end
      assert.equal(20, count(lines(1), "^elected %d+ v%d+ true$"))
      table.sort(latencies)
      io.stderr:write(("\n[%s] 20 reloads: edit to first new stamp median %.0f ms, max %.0f ms\n"):format(
        backend, median(latencies) * 1000, latencies[#latencies] * 1000))
    end)

    it("keeps leading with the old code after a broken edit, and names file and line", function()
      local before = reloads(1)
      local text = policy("v22"):gsub("ttl = 2", "ttl = = 2")
      local line = select(2, text:match("^(.-)ttl = = 2"):gsub("\n", "")) + 1
      write(path, text)
      local failed = H.wait_until(function()
        for _, line in ipairs(lines(1, "stderr")) do
          if line:find("reload failed", 1, true) then return line end
        end
      end, 3)
      assert.truthy(failed, dump())
      local where = ("policy %s:%d: unexpected symbol near '='"):format(path, line)
      assert.truthy(failed:find(where, 1, true), failed)
      -- the running policy's on_error was told the same
      assert.truthy(H.wait_until(function()
        for _, line in ipairs(lines(1)) do
          if line == "error v21 " .. where then return true end
        end
      end, 2), dump())
      local n = #read_stamps()
      os.execute("sleep 0.3")
      local stamps = read_stamps()
      assert.is_true(#stamps > n + 10, "the old code stopped working")
      for i = n + 1, #stamps do assert.equal("v21", stamps[i].v) end
      assert.equal(before, reloads(1))
      check_history()
    end)

    it("catches an editor-style save (write a new file, rename it over the old)", function()
      local tmp = dir .. "/.policy.lua.swp"
      write(tmp, policy("v22"))
      os.rename(tmp, path)
      assert.truthy(first_stamp("v22"), dump())
      check_history()
    end)

    it("gives one reload for a burst of writes; none for touch; SIGHUP forces one", function()
      local before = reloads(1)
      for v = 23, 32 do
        write(path, policy("v" .. v))
        L.sleep(0.01)
      end
      assert.truthy(first_stamp("v32"), dump())
      os.execute("sleep 0.4")
      assert.equal(before + 1, reloads(1))
      assert.equal(0, count(lines(1), "^elected %d+ v2[3-9] ") + count(lines(1), "^elected %d+ v3[01] "))
      os.execute("touch " .. H.quote(path))
      os.execute("sleep 0.4")
      assert.equal(before + 1, reloads(1))
      local elected = count(lines(1), "^elected ")
      H.signal(procs[1], "HUP")
      assert.truthy(H.wait_until(function() return reloads(1) == before + 2 end, 3), dump())
      assert.truthy(H.wait_until(function() return count(lines(1), "^elected ") == elected + 1 end, 3), dump())
      check_history()
    end)

    it("refuses a changed key with \"needs restart\" and reloads the rest", function()
      write(path, policy("v33", { [key:gsub("%p", "%%%0")] = key .. "/elsewhere" }))
      assert.truthy(first_stamp("v33"), dump())
      for i = 1, 3 do
        assert.truthy(H.wait_until(function()
          for _, line in ipairs(lines(i, "stderr")) do
            if line:find("key changed: needs restart", 1, true) then return true end
          end
        end, 3), dump())
      end
      os.execute("sleep 0.3")
      check_history()
    end)
  end)
end

local store_dir
describe_processes("file://", true, function()
  store_dir = H.tmpdir("reload-store")
  return "file://" .. store_dir
end, function() if store_dir then os.execute("rm -rf " .. H.quote(store_dir)) end end)

local etcd
describe_processes("etcd", H.have("etcd", pending), function()
  etcd = require("etcd").start()
  return etcd.url
end, function() if etcd then etcd:stop() end end)
