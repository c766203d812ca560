-- The stores the bench runs on, started on 127.0.0.1 with free ports and
-- temp dirs: etcd with the v2 API on (docker/libkv speaks only v2; we use
-- v3 on the same server) and a standalone ZooKeeper. Each has
-- requests() -> the server's own count of client requests so far.
local P = require "proc"

local S = {}

local function free_port(taken)
  local used = P.sh("ss -Htan 2>/dev/null")
  for _ = 1, 500 do
    local port = math.random(20000, 45000)
    if not used:find(":" .. port .. "%s") and not taken[port] then
      taken[port] = true
      return port
    end
  end
  error("no free port on 127.0.0.1")
end

local taken = {}

-- The sum of every series of a Prometheus counter.
local function metric_sum(text, name)
  local sum = 0
  for line in text:gmatch("[^\n]+") do
    local rest = line:sub(#name + 1)
    if line:sub(1, #name) == name and rest:match("^[{ ]") then
      sum = sum + (tonumber(rest:match("(%S+)$")) or 0)
    end
  end
  return sum
end

-- The data dir is on tmpfs where there is one: the figures are about the
-- clients, not this machine's fsync latency (the same for both sides).
function S.etcd(dir)
  local client, peer, metrics = free_port(taken), free_port(taken), free_port(taken)
  local data = io.open("/dev/shm") and P.sh("mktemp -d /dev/shm/leadership-bench-etcd.XXXXXX"):gsub("%s+$", "")
    or dir .. "/etcd"
  local proc = P.spawn({
    "etcd", "--name", "bench", "--data-dir", data,
    "--listen-client-urls", "http://127.0.0.1:" .. client,
    "--advertise-client-urls", "http://127.0.0.1:" .. client,
    "--listen-peer-urls", "http://127.0.0.1:" .. peer,
    "--initial-advertise-peer-urls", "http://127.0.0.1:" .. peer,
    "--initial-cluster", "bench=http://127.0.0.1:" .. peer,
    "--listen-metrics-urls", "http://127.0.0.1:" .. metrics,
    "--enable-v2=true", "--logger=zap", "--log-level=warn",
  }, dir, "etcd")
  local self = {
    name = "etcd", proc = proc, port = client, url = "etcd://127.0.0.1:" .. client,
    metrics_url = ("http://127.0.0.1:%d/metrics"):format(metrics),
  }
  local up = P.wait(function()
    return P.sh(("curl -s -m 1 http://127.0.0.1:%d/health"):format(client)):find('"health":"true"')
  end, 20)
  if not up then error("etcd did not start: " .. (P.read(proc.stderr) or ""):sub(-2000)) end
  -- Requests the server received: v2 HTTP requests (docker/libkv) plus v3
  -- gRPC messages (ours, also through the JSON gateway, and lease
  -- keep-alives and watch requests inside streams).
  function self.requests()
    local text = P.sh("curl -s -m 5 " .. self.metrics_url)
    return metric_sum(text, "etcd_http_received_total") + metric_sum(text, "grpc_server_msg_received_total")
  end
  -- Removes what a killed docker/leadership process left under prefix
  -- (v2 keys; ours revokes its lease when stopped).
  function self.clear(prefix)
    P.sh(("curl -s -m 10 -X DELETE 'http://127.0.0.1:%d/v2/keys/%s?recursive=true' >/dev/null"):format(client, prefix))
  end
  function self.stop()
    P.stop(proc, 5)
    os.execute("rm -rf " .. P.quote(data))
  end
  self.data = data
  self.version = P.sh("etcd --version"):match("etcd Version: (%S+)")
  return self
end

-- One four-letter-word command over a plain TCP connection (bash's
-- /dev/tcp: no netcat needed).
local function four_letters(port, word)
  return P.sh(("timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d; echo %s >&3; cat <&3' 2>/dev/null"):format(port, word))
end

-- tickTime 500 ms: sessions expire within a tick of their timeout (the
-- default 2 s tick would add up to 2 s to every crash failover, ours and
-- the peer's alike). maxClientCnxns 0: a hundred followers on one address.
function S.zookeeper(dir)
  local client = free_port(taken)
  local conf = dir .. "/zk"
  -- on tmpfs where there is one, like etcd's
  local data = io.open("/dev/shm") and P.sh("mktemp -d /dev/shm/leadership-bench-zk.XXXXXX"):gsub("%s+$", "")
    or conf .. "/data"
  os.execute("mkdir -p " .. P.quote(conf) .. " " .. P.quote(data))
  local f = assert(io.open(conf .. "/zoo.cfg", "w"))
  f:write(table.concat({
    "tickTime=500", "dataDir=" .. data, "clientPort=" .. client,
    "clientPortAddress=127.0.0.1", "maxClientCnxns=0", "admin.enableServer=false",
    "4lw.commands.whitelist=mntr,ruok,srvr", "minSessionTimeout=1000", "maxSessionTimeout=60000",
    "",
  }, "\n"))
  f:close()
  local proc = P.spawn({
    "java", "-Xmx1g", "-cp", conf .. ":/usr/share/java/zookeeper.jar",
    "org.apache.zookeeper.server.ZooKeeperServerMain", conf .. "/zoo.cfg",
  }, dir, "zookeeper")
  local self = { name = "zookeeper", proc = proc, port = client, url = "zk://127.0.0.1:" .. client }
  -- "srvr" answers only once the server serves requests (ruok answers
  -- earlier, and a session opened then can fail)
  if not P.wait(function() return four_letters(client, "srvr"):find("Mode: standalone") end, 30) then
    error("ZooKeeper did not start: " .. (P.read(proc.stderr) or ""):sub(-2000))
  end
  -- Packets from clients: every request, pings included.
  function self.requests()
    return tonumber(four_letters(client, "mntr"):match("zk_packets_received%s+(%d+)"))
  end
  function self.clear() end
  function self.stop()
    P.stop(proc, 5)
    os.execute("rm -rf " .. P.quote(data))
  end
  self.version = four_letters(client, "srvr"):match("Zookeeper version: ([%d.]+)")
  return self
end

return S
