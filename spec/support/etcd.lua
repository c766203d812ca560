-- Throwaway etcd servers for the specs (Debian's etcd-server): one member
-- or a cluster of three, on 127.0.0.1 with free ports and temp data dirs
-- (in /dev/shm when there is one: fsync there is cheap, so a thousand
-- txns take milliseconds, not seconds), optionally with TLS and client
-- certificates made by openssl here.
local E = {}
E.__index = E

local function data_root()
  local shm = io.open("/dev/shm", "r")
  if shm then
    shm:close()
    return (H.sh("mktemp -d /dev/shm/leadership-etcd.XXXXXX"):gsub("%s+$", ""))
  end
  return H.tmpdir("etcd")
end

-- A CA, a server certificate for 127.0.0.1 and a client certificate, in dir.
function E.make_certs(dir)
  local function run(cmd)
    local out = H.sh("cd " .. H.quote(dir) .. " && " .. cmd .. " 2>&1; echo rc=$?")
    assert(out:match("rc=0%s*$"), "openssl failed: " .. cmd .. "\n" .. out)
  end
  run("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=leadership-test-ca " ..
      "-keyout ca.key -out ca.crt")
  local ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
  H.write(dir .. "/ext.cnf", ext)
  for _, name in ipairs({ "server", "client" }) do
    run(("openssl req -newkey rsa:2048 -nodes -subj /CN=%s -keyout %s.key -out %s.csr"):format(name, name, name))
    run(("openssl x509 -req -in %s.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 " ..
         "-extfile ext.cnf -out %s.crt"):format(name, name))
  end
  return { ca = dir .. "/ca.crt", cert = dir .. "/client.crt", key = dir .. "/client.key",
           server_cert = dir .. "/server.crt", server_key = dir .. "/server.key" }
end

local function member_argv(self, m)
  local scheme = self.tls and "https" or "http"
  local argv = {
    "etcd", "--name", m.name, "--data-dir", m.dir,
    "--listen-client-urls", scheme .. "://127.0.0.1:" .. m.port,
    "--advertise-client-urls", scheme .. "://127.0.0.1:" .. m.port,
    "--listen-peer-urls", "http://127.0.0.1:" .. m.peer,
    "--initial-advertise-peer-urls", "http://127.0.0.1:" .. m.peer,
    "--initial-cluster", self.initial_cluster,
    "--initial-cluster-state", "new", "--initial-cluster-token", self.token,
    -- fast failure detection for the cluster specs
    "--heartbeat-interval", "50", "--election-timeout", "500",
    "--logger", "zap", "--log-level", "warn",
  }
  for _, a in ipairs(self.args or {}) do argv[#argv + 1] = a end
  if self.tls then
    for _, a in ipairs({ "--cert-file", self.tls.server_cert, "--key-file", self.tls.server_key,
                         "--trusted-ca-file", self.tls.ca, "--client-cert-auth" }) do
      argv[#argv + 1] = a
    end
  end
  return argv
end

-- opts: members (1 or 3), tls (true: make certificates), args (more flags)
function E.start(opts)
  opts = opts or {}
  local self = setmetatable({ members = {}, root = data_root(), token = "t" .. math.random(1e9),
                              args = opts.args }, E)
  if opts.tls then self.tls = E.make_certs(self.root) end
  local peers = {}
  for i = 1, opts.members or 1 do
    local m = { name = "m" .. i, port = H.free_port(), peer = H.free_port() }
    m.dir = self.root .. "/" .. m.name
    self.members[i] = m
    peers[i] = m.name .. "=http://127.0.0.1:" .. m.peer
  end
  self.initial_cluster = table.concat(peers, ",")
  for _, m in ipairs(self.members) do self:launch(m) end
  local hosts = {}
  for i, m in ipairs(self.members) do hosts[i] = "127.0.0.1:" .. m.port end
  self.hosts = table.concat(hosts, ",")
  self.url = "etcd://" .. self.hosts
  local ok = H.wait_until(function() return self:healthy() end, 20, 0.1)
  if not ok then
    local logs = self:logs()
    self:stop()
    error("etcd did not come up:\n" .. logs)
  end
  return self
end

function E:launch(m)
  m.proc = H.spawn(member_argv(self, m), { dir = self.root, stdout = m.dir .. ".out", stderr = m.dir .. ".err" })
end

function E:logs()
  local parts = {}
  for _, m in ipairs(self.members) do parts[#parts + 1] = (H.read(m.dir .. ".err") or ""):sub(-3000) end
  return table.concat(parts, "\n---\n")
end

-- etcdctl against every live member; returns its output (stdout+stderr).
function E:ctl(...)
  local eps = {}
  local scheme = self.tls and "https" or "http"
  for _, m in ipairs(self.members) do
    if m.proc and H.alive(m.proc) then eps[#eps + 1] = scheme .. "://127.0.0.1:" .. m.port end
  end
  local words = { "ETCDCTL_API=3", "etcdctl", "--endpoints=" .. table.concat(eps, ","),
                  "--command-timeout=5s" }
  if self.tls then
    words[#words + 1] = "--cacert=" .. self.tls.ca
    words[#words + 1] = "--cert=" .. self.tls.cert
    words[#words + 1] = "--key=" .. self.tls.key
  end
  if self.root_password then words[#words + 1] = "--user=root:" .. self.root_password end
  for _, a in ipairs({ ... }) do words[#words + 1] = H.quote(a) end
  return H.sh(table.concat(words, " ") .. " 2>&1")
end

function E:healthy()
  return self:ctl("endpoint", "health"):match("is healthy") ~= nil and
         not self:ctl("endpoint", "health"):match("unhealthy")
end

local b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

function E.unb64(text)
  local bits = text:gsub("[^%w+/]", ""):gsub(".", function(c)
    local v = b64:find(c, 1, true) - 1
    local s = ""
    for i = 5, 0, -1 do s = s .. ((v >> i) & 1) end
    return s
  end)
  return (bits:gsub("%d%d%d%d%d%d%d%d", function(byte) return string.char(tonumber(byte, 2)) end)
              :gsub("%d+$", ""))
end

-- Keys under prefix with their values: { [key] = value }, and the keys in
-- creation order.
function E:keys(prefix)
  local out = self:ctl("get", "--prefix", prefix, "--sort-by=CREATE", "--order=ASCEND", "-w", "json")
  local ok, doc = pcall(require("cjson").decode, out)
  local list = {}
  if not ok or type(doc) ~= "table" then return list end
  for _, kv in ipairs(doc.kvs or {}) do
    list[#list + 1] = { key = E.unb64(kv.key), value = kv.value and E.unb64(kv.value) or "",
                        create_revision = kv.create_revision, lease = kv.lease }
  end
  return list
end

-- Lease ids (hex strings, as etcdctl prints them).
function E:leases()
  local ids = {}
  for id in self:ctl("lease", "list"):gmatch("\n(%x+)") do ids[#ids + 1] = id end
  return ids
end

-- The member serving `port`, by index.
function E:member_on(port)
  for i, m in ipairs(self.members) do if m.port == port then return i, m end end
end

function E:kill(i)
  local m = self.members[i]
  if m.proc and H.alive(m.proc) then
    H.signal(m.proc, "KILL")
    H.wait_until(function() return not H.alive(m.proc) end, 5)
  end
end

-- Adds a root user (password) and user `name`/`password` with read-write
-- on everything, then turns authentication on.
function E:enable_auth(name, password, root_password)
  root_password = root_password or "rootpw-" .. math.random(1e9)
  local function check(out) assert(not out:match("Error"), out) end
  check(self:ctl("user", "add", "root:" .. root_password))
  check(self:ctl("role", "add", "rw"))
  check(self:ctl("role", "grant-permission", "rw", "--prefix=true", "readwrite", ""))
  check(self:ctl("user", "add", name .. ":" .. password))
  check(self:ctl("user", "grant-role", name, "rw"))
  check(self:ctl("auth", "enable"))
  self.root_password = root_password
end

-- Starts the members that are down again and waits until all are healthy.
function E:restart_dead()
  for _, m in ipairs(self.members) do
    if not (m.proc and H.alive(m.proc)) then self:launch(m) end
  end
  assert(H.wait_until(function() return self:healthy() end, 20), "etcd did not recover:\n" .. self:logs())
end

function E:stop()
  for i in ipairs(self.members) do self:kill(i) end
  if self.root:match("leadership%-etcd") then os.execute("rm -rf " .. H.quote(self.root)) end
end

return E
