-- The stores of the chaos run, one per backend configuration, behind one
-- shape: the URL the nodes use, the ports the partitioned node reaches
-- through chaos-relay, and the store faults that configuration supports.
-- Servers start through the spec support files (spec/support/*.lua);
-- only Redis is started here, because the chaos run wants it durable.
--
--   st.url, st.ttl, st.ports, st.kinds ({ "store_restart", ... })
--   st:url_via(addr)   the URL with 127.0.0.1 replaced (the netns node)
--   st:crash() / st:launch() / st:healthy()   store_restart
--   st:pause() / st:resume()                  store_pause
--   st:members(), st:member_kill(i), st:member_launch(i)   member_kill
--   st:stop()
local S = {}

-- Every configuration, in the order a full run starts them.
S.names = { "file", "etcd1", "etcd3", "zk1", "zk3", "redis", "consul" }

local base = {}
base.__index = base

function base:url_via(addr)
  if not self.ports then return nil end
  return (self.url:gsub("127%.0%.0%.1", addr))
end

function base:healthy() return true end
function base:stop() end

local function make(fields)
  return setmetatable(fields, base)
end

local function signal_pid(pid, sig)
  if pid then os.execute(("kill -%s %d 2>/dev/null"):format(sig, pid)) end
end

-- What is missing for configuration `name`, or nil.
function S.missing(name)
  local function lacks(bin)
    return H.sh("command -v " .. H.quote(bin) .. " 2>/dev/null") == "" and bin or nil
  end
  if name:match("^etcd") then return lacks("etcd") or lacks("etcdctl") end
  if name:match("^zk") then return lacks("java") or (not H.read("/usr/share/java/zookeeper.jar") and "zookeeper.jar") end
  if name == "redis" then return lacks("redis-server") or lacks("redis-cli") end
  if name == "consul" then
    return H.sh("test -x " .. H.quote(H.build .. "/consul-double") .. " && echo y") == "" and
      (H.build .. "/consul-double (make " .. H.build .. "/consul-double)") or nil
  end
  return nil
end

-- ---- file: a directory; no store process, no network ----

local function start_file(dir)
  local path = dir .. "/store"
  os.execute("mkdir -p " .. H.quote(path))
  return make { url = "file://" .. path, ttl = 2, kinds = {} }
end

-- ---- etcd: one member or three (spec/support/etcd.lua) ----

local function start_etcd(members)
  local E = require "etcd"
  local cluster = E.start { members = members }
  local st = make { url = cluster.url, ttl = 2, ports = {}, cluster = cluster }
  for i, m in ipairs(cluster.members) do st.ports[i] = m.port end
  if members == 1 then
    st.kinds = { "store_restart", "store_pause" }
  else
    st.kinds = { "member_kill" }
  end
  function st:healthy() return self.cluster:healthy() end
  function st:crash() self.cluster:kill(1) end
  function st:launch() self.cluster:launch(self.cluster.members[1]) end
  function st:pause() signal_pid(self.cluster.members[1].proc.pid, "STOP") end
  function st:resume() signal_pid(self.cluster.members[1].proc.pid, "CONT") end
  function st:members() return #self.cluster.members end
  function st:member_kill(i) self.cluster:kill(i) end
  function st:member_launch(i) self.cluster:launch(self.cluster.members[i]) end
  function st:pids()
    local pids = {}
    for _, m in ipairs(self.cluster.members) do pids[#pids + 1] = m.proc and m.proc.pid end
    return pids
  end
  function st:stop()
    for _, m in ipairs(self.cluster.members) do signal_pid(m.proc and m.proc.pid, "CONT") end
    self.cluster:stop()
  end
  return st
end

-- ---- ZooKeeper: standalone or an ensemble of three (spec/support/zookeeper.lua) ----

local function start_zk(servers)
  local Z = require "zookeeper"
  local zk = servers == 1 and Z.standalone { tick = 500 } or Z.ensemble(servers, { tick = 500 })
  local st = make { url = zk.url, ttl = 2, ports = {}, zk = zk }
  for i, s in ipairs(zk.servers) do st.ports[i] = s.port end
  st.kinds = servers == 1 and { "store_restart", "store_pause" } or { "member_kill" }
  function st:healthy()
    for _, s in ipairs(self.zk.servers) do
      if not s:mode() then return false end
    end
    return true
  end
  function st:crash() self.zk.servers[1]:kill() end
  function st:launch()
    self.zk.servers[1]:launch()
    self.zk.servers[1].stopped = false
  end
  function st:pause() self.zk.servers[1]:pause() end
  function st:resume() self.zk.servers[1]:resume() end
  function st:members() return #self.zk.servers end
  function st:member_kill(i) self.zk.servers[i]:kill() end
  function st:member_launch(i)
    self.zk.servers[i]:launch()
    self.zk.servers[i].stopped = false
  end
  function st:pids()
    local pids = {}
    for _, s in ipairs(self.zk.servers) do pids[#pids + 1] = s.proc and s.proc.pid end
    return pids
  end
  function st:stop()
    for _, s in ipairs(self.zk.servers) do signal_pid(s.proc and s.proc.pid, "CONT") end
    self.zk:stop()
  end
  return st
end

-- ---- Redis: durable (every write fsynced to the AOF), so a restart is a
-- restart, not the data loss spec/50_redis_spec.lua covers: a node that
-- never saw the old term cannot be protected from that, and the README
-- says so. ----

local function start_redis(dir)
  local st = make { ttl = 2, ports = {}, dir = dir .. "/redis", kinds = { "store_restart", "store_pause" } }
  os.execute("mkdir -p " .. H.quote(st.dir))
  st.port = H.free_port()
  st.ports[1] = st.port
  st.url = "redis://127.0.0.1:" .. st.port
  function st:cli(...)
    local words = { "redis-cli", "-h", "127.0.0.1", "-p", tostring(self.port) }
    for _, a in ipairs({ ... }) do words[#words + 1] = H.quote(a) end
    return (H.sh(table.concat(words, " ") .. " 2>&1"):gsub("%s+$", ""))
  end
  function st:healthy() return self:cli("PING") == "PONG" end
  function st:launch()
    self.proc = H.spawn({ "redis-server", "--bind", "127.0.0.1", "--port", tostring(self.port),
                          "--dir", self.dir, "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                          "--daemonize", "no", "--logfile", self.dir .. "/redis.log" }, { dir = self.dir })
  end
  function st:crash()
    signal_pid(self.proc.pid, "CONT")
    signal_pid(self.proc.pid, "KILL")
    H.wait_until(function() return not H.alive(self.proc) end, 5)
  end
  function st:pause() signal_pid(self.proc.pid, "STOP") end
  function st:resume() signal_pid(self.proc.pid, "CONT") end
  function st:pids() return { self.proc and self.proc.pid } end
  function st:stop() if self.proc then self:crash() end end
  st:launch()
  if not H.wait_until(function() return st:healthy() end, 10, 0.05) then
    local log = H.read(st.dir .. "/redis.log") or ""
    st:stop()
    error("redis-server did not start:\n" .. log)
  end
  return st
end

-- ---- the Consul double (spec/support/consul.lua). It keeps its state in
-- memory only, so a restart would be a data loss no real Consul server
-- has (its Raft log survives): the store fault here is a pause. Consul's
-- TTL floor is 10 s. lock_delay=0s: no lock-delay to hide a late step-down,
-- the local deadline alone must keep the history clean. ----

local function start_consul()
  local C = require "consul"
  local agent = C.start {}
  local st = make { url = agent.url .. "?lock_delay=0s", ttl = 10, ports = { agent.port }, agent = agent,
                    kinds = { "store_pause" } }
  function st:healthy() return self.agent:http("GET", "/v1/status/leader") == 200 end
  function st:pause() signal_pid(self.agent.proc.pid, "STOP") end
  function st:resume() signal_pid(self.agent.proc.pid, "CONT") end
  function st:pids() return { self.agent.proc and self.agent.proc.pid } end
  function st:stop()
    signal_pid(self.agent.proc.pid, "CONT")
    self.agent:stop()
  end
  return st
end

-- Starts configuration `name`; dir is the driver's working directory.
function S.start(name, dir)
  if name == "file" then return start_file(dir) end
  if name == "etcd1" then return start_etcd(1) end
  if name == "etcd3" then return start_etcd(3) end
  if name == "zk1" then return start_zk(1) end
  if name == "zk3" then return start_zk(3) end
  if name == "redis" then return start_redis(dir) end
  if name == "consul" then return start_consul() end
  error("unknown chaos store '" .. tostring(name) .. "' (known: " .. table.concat(S.names, ", ") .. ")")
end

return S
