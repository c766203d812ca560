-- The chaos run (`make chaos`): every backend configuration at once, each
-- under its own driver process (spec/chaos/driver.lua), then the history
-- checker (spec/chaos/check.lua) over all of them. Exits non-zero on any
-- violation, or if a configuration could not run.
--
--   CHAOS_SECONDS   how long faults are injected (default 120)
--   CHAOS_BACKENDS  comma-separated subset of: file, etcd1, etcd3, zk1,
--                   zk3, redis, consul (default: every one installed;
--                   one named here that cannot run is a failure)
--   CHAOS_DIR       where the histories go (default: a new temp dir; kept)
--   CHAOS_SEED      the random seed (default: from the clock; printed)
--   LEADERSHIP_BUILD  the build to run (default build)
--
-- Locally a missing server is a loud skip; in CI (env CI) a failure.
package.path = "spec/chaos/?.lua;spec/support/?.lua;" .. package.path
dofile("spec/support/helper.lua")
local Stores = require "stores"
local Netns = require "netns"
local check = require "check"

local seconds = tonumber(os.getenv("CHAOS_SECONDS") or "120")
local seed = tonumber(os.getenv("CHAOS_SEED") or "") or (os.time() % 1000000)
local dir = os.getenv("CHAOS_DIR") or H.tmpdir("chaos")
local explicit = os.getenv("CHAOS_BACKENDS")
os.execute("mkdir -p " .. H.quote(dir))

local function mono() return tonumber(H.read("/proc/uptime"):match("^([%d.]+)")) end
local function say(fmt, ...) io.stdout:write(("chaos: " .. fmt .. "\n"):format(...)) io.stdout:flush() end

for _, need in ipairs({ H.bin, H.build .. "/chaos-relay" }) do
  assert(H.read(need), need .. " is missing: run `make chaos` (or make " .. need .. ")")
end

local selected, failures = {}, {}
local names = Stores.names
if explicit and explicit ~= "" then
  names = {}
  for n in explicit:gmatch("[^,%s]+") do names[#names + 1] = n end
end
for _, n in ipairs(names) do
  local known = false
  for _, k in ipairs(Stores.names) do known = known or k == n end
  local missing
  if known then
    missing = Stores.missing(n)
  else
    missing = "unknown configuration (known: " .. table.concat(Stores.names, ", ") .. ")"
  end
  if not missing then
    selected[#selected + 1] = n
  elseif explicit or os.getenv("CI") then
    failures[#failures + 1] = n .. ": " .. missing
  else
    io.stderr:write(("\n*** SKIPPED chaos on %s: %s is not installed ***\n"):format(n, missing))
  end
end
if Netns.unavailable() then
  local why = Netns.unavailable()
  if os.getenv("CI") then failures[#failures + 1] = "partition: " .. why end
  io.stderr:write(("\n*** no partition faults: %s ***\n"):format(why))
end
Netns.sweep()

say("%d s of faults on %s; seed %d; histories in %s", seconds, table.concat(selected, ", "), seed, dir)

-- Each driver through sh, which records its exit status, in a session of
-- its own: a Ctrl-C or hangup of `make chaos` reaches this runner, not the
-- drivers, which see the runner gone and clean up after themselves (a
-- driver killed mid-run would leave its servers, nodes and namespaces).
-- Each gets a /24 of 169.254.0.0/16 for its nodes' namespaces, one no
-- address here uses.
local drivers = {}
local runner = tonumber(H.read("/proc/self/stat"):match("^(%d+)"))
local used = Netns.used_octets()
local octets = {}
for a = 1, 250 do
  if a ~= 169 and not used[a] then octets[#octets + 1] = a end
end
for i, n in ipairs(selected) do
  local sub = dir .. "/" .. n
  os.execute("mkdir -p " .. H.quote(sub))
  local script = ('env -u LD_PRELOAD "$@"; echo $? > %s'):format(H.quote(sub .. "/driver.status"))
  drivers[n] = H.spawn({ "setsid", "sh", "-c", script, "driver", "lua5.4", "spec/chaos/driver.lua", n, sub,
                         tostring(seconds), tostring(seed + i),
                         tostring(table.remove(octets, math.random(#octets))), tostring(runner) },
    { dir = sub, stdout = sub .. "/driver.out", stderr = sub .. "/driver.err" })
end

-- Startup (a ZooKeeper ensemble takes a while on a busy machine), the
-- faults, the last recovery and the teardown, bounded.
local limit = mono() + seconds + 300
local function running()
  for _, proc in pairs(drivers) do
    if H.alive(proc) then return true end
  end
  return false
end
while running() and mono() < limit do os.execute("sleep 1") end

-- A driver that overran or died leaves its processes: end them by the pids
-- it recorded, and its namespace.
for n, proc in pairs(drivers) do
  local sub = dir .. "/" .. n
  if H.alive(proc) then
    failures[#failures + 1] = n .. ": driver overran its time; killed"
    H.signal(proc, "KILL")
  end
  local status = tonumber(H.read(sub .. "/driver.status") or "")
  if status ~= 0 then
    failures[#failures + 1] = ("%s: driver exited %s:\n%s"):format(n, tostring(status),
      (H.read(sub .. "/driver.err") or ""):sub(-2000))
    for pid in (H.read(sub .. "/pids") or ""):gmatch("%d+") do
      -- only what the driver started, should the pid be someone else's by now
      local cmd = (H.read("/proc/" .. pid .. "/cmdline") or ""):gsub("%z", " ")
      for _, mine in ipairs({ "stamp_policy.lua", "etcd", "QuorumPeerMain", "redis-server", "consul-double",
                              "chaos-relay" }) do
        if cmd:find(mine, 1, true) then
          os.execute(("kill -CONT %s 2>/dev/null; kill -KILL %s 2>/dev/null"):format(pid, pid))
          break
        end
      end
    end
  end
end
Netns.sweep()

local faults, violations = check.run(dir)
for _, f in ipairs(failures) do io.stdout:write("chaos: FAILED ", f, "\n") end
if #failures > 0 then
  io.stdout:write(("faults %d violations %d\n"):format(faults, violations + #failures))
end
os.exit((violations == 0 and #failures == 0) and 0 or 1)
