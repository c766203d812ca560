-- A candidate process whose name lookups can be made to hang: it runs in a
-- mount namespace of its own (unshare -m) with the spec's /etc/hosts and
-- /etc/resolv.conf bound over the machine's, and its only name server, on
-- 127.0.0.77:53, reads every query and answers none. Needs root (the
-- namespace, and port 53).
local D = {}
D.__index = D

-- Why it cannot run here, or nil.
function D.unavailable()
  if H.sh("id -u"):match("^0%s") == nil then return "needs root: unshare -m, and port 53" end
  return nil
end

-- The child: a candidate (ttl 1.5, or arg 4) on url, saying what happens, each line
-- stamped with its own clock, then how long the loop took to run `seconds`.
local CHILD = [[
  local L = require "leadership"
  local url, key, seconds, ttl = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4] or "1.5")
  local function say(...)
    io.stdout:write(("%.3f "):format(L.now()), table.concat({ ... }, " "), "\n")
    io.stdout:flush()
  end
  local s = assert(L.store(url, { timeout = 1 }))
  local c = L.candidate(s, key, "a", { ttl = ttl })
  c.on_elected = function(_, term) say("elected", term) end
  c.on_renewed = function() say("renewed") end
  c.on_lost = function(_, reason) say("lost", reason) end
  c.on_error = function(_, err) say("error", err) end
  c:run()
  local started = L.now()
  L.run(seconds)
  say("ran", ("%.3f"):format(L.now() - started))
]]

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- Starts the name server; hosts_text is the namespace's /etc/hosts.
-- Stop it with :stop() (a spec's finally).
function D.start(hosts_text)
  local self = setmetatable({ dir = H.tmpdir("silent-dns") }, D)
  self.hosts, self.resolv, self.script = self.dir .. "/hosts", self.dir .. "/resolv.conf", self.dir .. "/child.lua"
  write(self.hosts, hosts_text)
  write(self.resolv, "nameserver 127.0.0.77\noptions timeout:3 attempts:1\n")
  write(self.script, CHILD)
  self.server = H.spawn({ "python3", "-c", table.concat({
    "import socket",
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
    "s.bind(('127.0.0.77', 53))",
    "print('ready', flush=True)",
    "while True: s.recv(512)" }, "\n") })
  assert(H.wait_until(function() return (H.read(self.server.stdout) or ""):find("ready") end, 5),
         "the silent name server did not start: " .. (H.read(self.server.stderr) or ""))
  return self
end

-- The namespace's /etc/hosts from now on (the same file, rewritten).
function D:set_hosts(text) write(self.hosts, text) end

-- Runs the child in the namespace on url and key for `seconds` (ttl: 1.5
-- if nil); returns
-- the process and said(): what it printed so far (its log is in
-- child.stderr).
function D:candidate(url, key, seconds, ttl)
  self.child = H.spawn({ "unshare", "-m", "sh", "-c",
    ("mount --bind %s /etc/hosts && mount --bind %s /etc/resolv.conf && exec lua5.4 %s %s %s %g %g"):format(
      H.quote(self.hosts), H.quote(self.resolv), H.quote(self.script), H.quote(url), H.quote(key), seconds,
      ttl or 1.5) },
    { env = { LUA_PATH = package.path, LUA_CPATH = package.cpath } })
  local child = self.child
  return child, function() return H.read(child.stdout) or "" end
end

function D:stop()
  H.signal(self.server, "KILL")
  if self.child then H.signal(self.child, "KILL") end
end

return D
