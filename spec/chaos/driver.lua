-- One backend configuration of the chaos run, as its own process:
--
--   lua5.4 spec/chaos/driver.lua NAME DIR SECONDS SEED [OCTET [RUNNER]]
--
-- Starts the store (spec/chaos/stores.lua), five `leadership run` nodes
-- under spec/support/stamp_policy.lua (spec/support/cluster.lua), each in
-- a network namespace of its own when the store is reachable over TCP
-- (spec/chaos/netns.lua: on 169.254.OCTET.0/24), and then, until SECONDS
-- have passed, injects one fault at a time, chosen at random among those
-- this configuration supports:
--
--   kill_leader, kill_follower    kill -9, then restarted after 0..ttl s
--   pause_leader, pause_follower  SIGSTOP past the local deadline, SIGCONT
--   store_restart                 kill -9 of the store, restarted on its data
--   store_pause                   SIGSTOP of the store for up to 2 ttl
--   member_kill                   kill -9 of one cluster member, restarted
--   partition_leader              the leader's link down, then up
--   partition_follower            a follower's link down, then up
--
-- Each fault is healed, then the driver waits (bounded) for a leader to
-- stamp again before the next. Everything goes to DIR: faults.log (one
-- line per fault: "fault KIND TARGET START HEAL", wall-clock seconds), the
-- stamps, every node incarnation's output. spec/chaos/check.lua judges it.
--
-- The driver never loads the leadership module (a sanitizer build's module
-- cannot load into a plain lua5.4); its clock comes from /proc and date.
package.path = "spec/chaos/?.lua;spec/support/?.lua;" .. package.path
dofile("spec/support/helper.lua")
local Stores = require "stores"
local Netns = require "netns"
local Cluster = require "cluster"

local name, dir, seconds, seed, octet = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5])
local runner = tonumber(arg[6])
assert(name and dir and seconds, "usage: driver.lua NAME DIR SECONDS [SEED [OCTET [RUNNER]]]")
math.randomseed(seed or os.time())

local NODES = 5

-- ---- clocks and waiting, without the leadership module ----

local function mono()
  return tonumber(H.read("/proc/uptime"):match("^([%d.]+)"))
end

local function wall()
  return tonumber(H.sh("date +%s.%N"))
end

local function sleep(s)
  if s > 0 then os.execute(("sleep %.3f"):format(s)) end
end

-- True once the runner (spec/chaos/run.lua) is gone, Ctrl-C'd or killed:
-- then the run ends early, and the teardown still runs.
local function orphaned()
  return runner ~= nil and H.read(("/proc/%d/stat"):format(runner)) == nil
end

H.wait_until = function(fn, timeout, interval)
  local deadline = mono() + timeout
  repeat
    local v = fn()
    if v then return v end
    sleep(interval or 0.05)
  until mono() > deadline or orphaned()
  return fn()
end

local function rand(lo, hi) return lo + math.random() * (hi - lo) end

-- ---- the log ----

local log_file = assert(io.open(dir .. "/faults.log", "a"))
local function record(...)
  log_file:write(table.concat({ ... }, " "), "\n")
  log_file:flush()
end

local function note(fmt, ...)
  io.stderr:write(("[chaos %s] " .. fmt .. "\n"):format(name, ...))
end

-- Every pid this driver started, for the runner to end if the driver
-- itself dies: rewritten whenever one starts.
local pids_path = dir .. "/pids"
local function save_pids(store, relay, cluster)
  local list = {}
  for _, pid in ipairs(store and store.pids and store:pids() or {}) do list[#list + 1] = pid end
  if relay then list[#list + 1] = relay.pid end
  for _, proc in pairs(cluster and cluster.procs or {}) do list[#list + 1] = proc.pid end
  H.write(pids_path, table.concat(list, "\n") .. "\n")
end

-- ---- setup ----

local store = Stores.start(name, dir)
local ttl = store.ttl
local deadline = ttl * 2 / 3
record("begin", ("%.6f"):format(wall()), "ttl", ttl, "store", store.url)

-- node name -> its namespace; the relay; the nodes. File-wide, so the
-- teardown also ends what a failed setup or run left behind.
local nets, relay, cluster = {}, nil, nil
local count = 0
local function destroy_nets()
  for _, ns in pairs(nets) do ns:destroy() end
end

local function teardown()
  if cluster then
    -- nodes first: they release at once on SIGTERM
    for _, n in ipairs(cluster.names) do
      H.signal(cluster:proc(n), "CONT")
      H.signal(cluster:proc(n), "TERM")
    end
    H.wait_until(function()
      for _, n in ipairs(cluster.names) do
        if H.alive(cluster:proc(n)) then return false end
      end
      return true
    end, 10, 0.1)
    cluster:stop()
  end
  if relay then H.signal(relay, "KILL") end
  destroy_nets()
  store:stop()
end

local function run()
if store.ports then
  local why = Netns.unavailable() or (not octet and "no OCTET given")
  if why then
    record("skip", "partition", (why:gsub("%s", "_")))
    note("no partition faults: %s", why)
  else
    local pid = tonumber(H.read("/proc/self/stat"):match("^(%d+)"))
    local routes = { H.build .. "/chaos-relay" }
    local ok, err = pcall(function()
      for i = 1, NODES do
        local ns = Netns.create(pid, octet, i)
        nets["node-" .. i] = ns
        for _, port in ipairs(store.ports) do
          routes[#routes + 1] = ("%s:%d=127.0.0.1:%d"):format(ns.host, port, port)
        end
      end
    end)
    if not ok then error(err, 0) end
    relay = H.spawn(routes, { dir = dir, stdout = dir .. "/relay.out", stderr = dir .. "/relay.err" })
    if not H.wait_until(function() return (H.read(dir .. "/relay.err") or ""):match("up") end, 5) then
      error("chaos-relay did not start: " .. (H.read(dir .. "/relay.err") or ""))
    end
  end
end

cluster = Cluster.start { store = store.url, ttl = ttl, key = "chaos/" .. name, nodes = 0, dir = dir }
for i = 1, NODES do
  local node, env, wrap = "node-" .. i, { STAMP_DEADLINE = "1" }, nil
  if nets[node] then
    env.STORE, wrap = store:url_via(nets[node].host), nets[node]:wrap()
  end
  cluster:add(node, env, wrap)
end
save_pids(store, relay, cluster)
end

-- ---- who leads: the node of the newest stamp, if it is fresh ----

local function last_stamp()
  local f = io.open(cluster.stamps, "rb")
  if not f then return nil end
  local size = f:seek("end")
  f:seek("set", math.max(0, size - 400))
  local tail = f:read("a")
  f:close()
  local t, node
  for line in tail:gmatch("[^\n]+") do
    local lt, ln = line:match("^([%d.]+) (%S+) %d+")
    if lt then t, node = tonumber(lt), ln end
  end
  return t, node
end

local function leader()
  local t, node = last_stamp()
  if t and wall() - t < 0.5 then return node end
end

local function pick(list) return list[math.random(#list)] end

local function followers()
  local lead, list = leader(), {}
  for _, n in ipairs(cluster.names) do
    if n ~= lead then list[#list + 1] = n end
  end
  return list
end

local function stamp_after(t, timeout)
  return H.wait_until(function()
    local last = last_stamp()
    return last and last > t
  end, timeout, 0.05)
end

-- ---- the faults: each returns target, start, heal (wall clock) ----

local faults = {}

local function kill_node(node)
  local proc = cluster:proc(node)
  local start = wall()
  H.signal(proc, "KILL")
  H.wait_until(function() return not H.alive(proc) end, 5, 0.01)
  sleep(rand(0, ttl))
  cluster:restart(node)
  save_pids(store, relay, cluster)
  return node, start, wall()
end

local function pause_node(node)
  local proc = cluster:proc(node)
  local start = wall()
  H.signal(proc, "STOP")
  sleep(rand(deadline + 0.3, 2 * ttl + 0.5))
  H.signal(proc, "CONT")
  return node, start, wall()
end

-- nil when no node leads right now: another fault is picked
function faults.kill_leader()
  local l = leader()
  if l then return kill_node(l) end
end

function faults.kill_follower() return kill_node(pick(followers())) end

function faults.pause_leader()
  local l = leader()
  if l then return pause_node(l) end
end

function faults.pause_follower() return pause_node(pick(followers())) end

function faults.store_restart()
  local start = wall()
  store:crash()
  sleep(rand(0, 2))
  store:launch()
  save_pids(store, relay, cluster)
  if not H.wait_until(function() return store:healthy() end, 60, 0.2) then record("stuck", "store", "not_healthy") end
  return "store", start, wall()
end

function faults.store_pause()
  local start = wall()
  store:pause()
  sleep(rand(0.5, 2 * ttl))
  store:resume()
  return "store", start, wall()
end

function faults.member_kill()
  local i = math.random(store:members())
  local start = wall()
  store:member_kill(i)
  sleep(rand(1, 2 * ttl + 2))
  store:member_launch(i)
  save_pids(store, relay, cluster)
  if not H.wait_until(function() return store:healthy() end, 60, 0.2) then record("stuck", "member" .. i, "not_healthy") end
  return "member" .. i, start, wall()
end

local function partition(node)
  local ns = nets[node]
  local start = wall()
  ns:cut()
  sleep(rand(0.5, 2 * ttl + 1))
  ns:heal()
  return node, start, wall()
end

function faults.partition_leader()
  local l = leader()
  if l then return partition(l) end
end

function faults.partition_follower() return partition(pick(followers())) end

-- The kinds this configuration supports (known once the setup ran).
local function fault_kinds()
  local kinds = { "kill_leader", "kill_follower", "pause_leader", "pause_follower" }
  for _, k in ipairs(store.kinds) do kinds[#kinds + 1] = k end
  if next(nets) then
    kinds[#kinds + 1] = "partition_leader"
    kinds[#kinds + 1] = "partition_follower"
  end
  record("kinds", table.concat(kinds, ","))
  return kinds
end

-- A node that died without being killed is a crash: recorded (the checker
-- counts it as a violation, with its stderr) and started again.
local function reap_crashes()
  for _, n in ipairs(cluster.names) do
    local proc = cluster:proc(n)
    if not H.alive(proc) then
      record("crash", n, ("%.6f"):format(wall()), proc.stderr)
      note("%s died on its own; see %s", n, proc.stderr)
      cluster:restart(n)
      save_pids(store, relay, cluster)
    end
  end
end

-- ---- the run ----

local function inject()
  local kinds = fault_kinds()
  local recovery = 3 * ttl + 30
  local first = stamp_after(0, 90)
  if not first then
    record("stuck", "startup", "no_leader")
    note("no leader within 90 s of startup")
  end
  local stop_at = mono() + seconds
  while first and mono() < stop_at and not orphaned() do
    local kind = pick(kinds)
    local target, start, heal = faults[kind]()
    if target then
      count = count + 1
      record("fault", kind, target, ("%.6f"):format(start), ("%.6f"):format(heal))
      if not stamp_after(heal, recovery) and not orphaned() then
        record("stuck", kind, ("no_leader_within_%ds"):format(recovery))
        note("no leader %d s after healing %s", recovery, kind)
      end
      reap_crashes()
      sleep(rand(0.2, 1.5))
    else
      sleep(0.2)
    end
  end
end

-- ---- the run, and a teardown whatever happened ----

local ok, err = xpcall(function()
  run()
  inject()
end, debug.traceback)
if not ok then
  record("error", (tostring(err):gsub("%s+", " ")))
  note("failed: %s", err)
end
if orphaned() then record("aborted", "the runner is gone") end
record("end", ("%.6f"):format(wall()), "faults", count)
teardown()
log_file:close()
note("done: %d faults", count)
os.exit(ok and 0 or 1)
