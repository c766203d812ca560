-- Starts throwaway ZooKeeper servers for the specs: Debian's zookeeper
-- package run as its own zkServer.sh runs it (java, the jar's classpath,
-- QuorumPeerMain), but with a zoo.cfg of ours in a temp dir: 127.0.0.1,
-- free ports, no admin HTTP server, four-letter words on, and a 500 ms
-- tick so session timeouts of 1-20 s are allowed. Standalone or an
-- ensemble of n.
local Z = {}
Z.__index = Z

Z.jar = "/usr/share/java/zookeeper.jar"
Z.cli_script = "/usr/share/zookeeper/bin/zkCli.sh"
local CLASSPATH = "/etc/zookeeper/conf:" .. Z.jar

-- True if java and the zookeeper jar are there; see H.have for what a
-- missing one means (CI: failure; locally: loud skip).
function Z.have(pending)
  if not H.have("java", pending) then return false end
  if H.read(Z.jar) then return true end
  return H.have(Z.jar, pending)
end

-- Sends a four-letter word to 127.0.0.1:port; returns the answer ("" if
-- the server does not answer within 3 s).
function Z.four(port, word)
  local script = ("exec 3<>/dev/tcp/127.0.0.1/%d && printf %s >&3 && cat <&3"):format(port, word)
  return H.sh("timeout 3 bash -c " .. H.quote(script) .. " 2>/dev/null")
end

local server = {}
server.__index = server

function server:four(word) return Z.four(self.port, word) end

-- "standalone", "leader", "follower", or nil while not serving.
function server:mode()
  return self:four("srvr"):match("Mode: (%a+)")
end

-- The JVM gets no LD_PRELOAD: under `make asan test` the sanitizer runtime
-- is preloaded for lua5.4, and it has no business inside java.
function server:launch()
  self.proc = H.spawn({
    "env", "-u", "LD_PRELOAD", "java", "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
    "-Djava.net.preferIPv4Stack=true", "-Dzookeeper.forceSync=no",
    "-cp", CLASSPATH, "org.apache.zookeeper.server.quorum.QuorumPeerMain", self.cfg,
  }, { dir = self.dir })
end

-- Frozen (SIGSTOP): its sockets stay open but nothing answers.
function server:pause()
  self.stopped = true
  H.signal(self.proc, "STOP")
end

function server:resume()
  H.signal(self.proc, "CONT")
  self.stopped = false
end

-- Gone at once: what a crash looks like to its clients and peers.
function server:kill()
  self.stopped = true
  if self.proc and H.alive(self.proc) then
    H.signal(self.proc, "CONT")
    H.signal(self.proc, "KILL")
    H.wait_until(function() return not H.alive(self.proc) end, 5)
  end
end

-- Started again on the same ports and data.
function server:restart()
  self:kill()
  self:launch()
  self.stopped = false
end

-- The session ids (as "0x...") of the clients connected to this server.
function server:sessions()
  local ids = {}
  for sid in self:four("cons"):gmatch("sid=(0x%x+)") do ids[#ids + 1] = sid end
  return ids
end

-- opts: servers (1 = standalone), tick (ms)
local function start(n, opts)
  local self = setmetatable({ dir = H.tmpdir("zk"), servers = {} }, Z)
  local tick = opts.tick or 500
  local taken = {}
  local function port()
    for _ = 1, 100 do
      local p = H.free_port()
      if not taken[p] then taken[p] = true return p end
    end
    error("no free port")
  end
  for i = 1, n do
    self.servers[i] = setmetatable({ id = i, port = port(), peer = port(), election = port() }, server)
  end
  local peers = {}
  if n > 1 then
    for _, s in ipairs(self.servers) do
      peers[#peers + 1] = ("server.%d=127.0.0.1:%d:%d"):format(s.id, s.peer, s.election)
    end
  end
  for _, s in ipairs(self.servers) do
    s.dir = self.dir .. "/" .. s.id
    os.execute("mkdir -p " .. H.quote(s.dir .. "/data"))
    H.write(s.dir .. "/data/myid", s.id .. "\n")
    s.cfg = s.dir .. "/zoo.cfg"
    H.write(s.cfg, table.concat({
      "tickTime=" .. tick,
      "initLimit=10",
      "syncLimit=2",
      "dataDir=" .. s.dir .. "/data",
      "clientPort=" .. s.port,
      "clientPortAddress=127.0.0.1",
      "minSessionTimeout=" .. 2 * tick,
      "maxSessionTimeout=" .. 40 * tick,
      "admin.enableServer=false",
      "4lw.commands.whitelist=*",
      "preAllocSize=1024",
      table.concat(peers, "\n"),
    }, "\n") .. "\n")
    s:launch()
  end
  if not self:wait_serving(60) then
    local modes = {}
    for _, s in ipairs(self.servers) do modes[#modes + 1] = tostring(s:mode()) end
    self:stop()
    error("ZooKeeper did not start (modes: " .. table.concat(modes, ",") .. ")")
  end
  local hosts = {}
  for _, s in ipairs(self.servers) do hosts[#hosts + 1] = "127.0.0.1:" .. s.port end
  self.hosts = table.concat(hosts, ",")
  self.url = "zk://" .. self.hosts
  return self
end

function Z.standalone(opts) return start(1, opts or {}) end
function Z.ensemble(n, opts) return start(n or 3, opts or {}) end

-- Waits until every live, unpaused server serves clients.
function Z:wait_serving(timeout)
  return H.wait_until(function()
    for _, s in ipairs(self.servers) do
      if not s.stopped and not s:mode() then return false end
    end
    return true
  end, timeout or 30, 0.1)
end

function Z:server(i) return self.servers[i] end

-- The server a client session (as "0x...") is connected to, or nil.
function Z:server_of(session)
  for _, s in ipairs(self.servers) do
    if not s.stopped then
      for _, id in ipairs(s:sessions()) do
        if tonumber(id) == tonumber(session) then return s end
      end
    end
  end
end

-- Runs zkCli.sh against the first live server, feeding it `lines` (a list
-- of commands); returns what it printed, without the JVM's chatter. With
-- `wait` (e.g. a function running the leadership loop until its argument
-- returns true) the CLI runs in the background meanwhile: a JVM start takes
-- long enough to starve an in-process leader's renewals otherwise.
function Z:cli(lines, wait)
  local target
  for _, s in ipairs(self.servers) do
    if not s.stopped then target = s break end
  end
  local input = self.dir .. "/cli-input"
  H.write(input, table.concat(lines, "\n") .. "\nquit\n")
  local out
  if wait then
    local proc = H.spawn({ "sh", "-c", ("unset LD_PRELOAD; exec timeout -s KILL 30 %s -server 127.0.0.1:%d <%s 2>&1"):format(
      Z.cli_script, target.port, H.quote(input)) }, { dir = self.dir })
    wait(function() return not H.alive(proc) end)
    out = H.read(proc.stdout) or ""
  else
    out = H.sh(("env -u LD_PRELOAD timeout -s KILL 30 %s -server 127.0.0.1:%d <%s 2>&1"):format(
      Z.cli_script, target.port, H.quote(input)))
  end
  local kept = {}
  for line in out:gmatch("[^\n]+") do
    if not line:match("^SLF4J") and not line:match("^WATCHER") and not line:match("^WatchedEvent")
      and not line:match("^%[zk:") and not line:match("^Connecting to") then
      kept[#kept + 1] = line
    end
  end
  return table.concat(kept, "\n")
end

-- The children of `path`, read with zkCli, in sequence order (the last
-- ten digits of sequential names), then by name.
function Z:children(path, wait)
  local out = self:cli({ "ls " .. path }, wait)
  local list = out:match("%[([^%]]*)%]")
  local names = {}
  for name in (list or ""):gmatch("[^,%s]+") do names[#names + 1] = name end
  table.sort(names, function(a, b)
    local sa, sb = a:match("(%d%d%d%d%d%d%d%d%d%d)$") or "", b:match("(%d%d%d%d%d%d%d%d%d%d)$") or ""
    if sa ~= sb then return sa < sb end
    return a < b
  end)
  return names
end

-- The session ids each watching session holds, from the leader-or-any
-- server's "wchc": { ["0x..."] = { "/path", ... } }.
function Z:watches()
  local by_session = {}
  for _, s in ipairs(self.servers) do
    if not s.stopped then
      local current
      for line in s:four("wchc"):gmatch("[^\n]+") do
        local sid = line:match("^(0x%x+)")
        if sid then
          current = {}
          by_session[sid] = current
        elseif current and line:match("^%s+/") then
          current[#current + 1] = line:match("^%s+(%S+)")
        end
      end
    end
  end
  return by_session
end

function Z:stop()
  for _, s in ipairs(self.servers) do s:kill() end
  if self.dir and self.dir:match("^/tmp/leadership%-zk") then
    os.execute("rm -rf " .. H.quote(self.dir))
  end
end

return Z
