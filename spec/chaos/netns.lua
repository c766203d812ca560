-- A network namespace for a chaos node, so that node can be cut off: a
-- veth pair joins it to this machine on a link-local /30 (169.254.A.B:
-- never routed, and this machine forwards nothing). The stores listen on
-- 127.0.0.1 only; chaos-relay, on the host end of each veth, carries the
-- node's connections to them. cut() sets the host end down: the node's
-- packets vanish, as in a real partition; heal() sets it up again.
--
-- Names carry the driver's pid, so a later run can tell (and remove) the
-- namespaces of a run that was killed before it cleaned up.
local N = {}
N.__index = N

local function run(cmd)
  local out = H.sh(cmd .. " 2>&1; echo rc=$?")
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return rc == 0, out:gsub("rc=%d+%s*$", "")
end

local function pid_alive(pid)
  return H.read(("/proc/%d/stat"):format(pid)) ~= nil
end

-- Why namespaces cannot be made here, or nil if they can.
function N.unavailable()
  if H.sh("id -u"):match("^0%s") == nil then return "not root: ip netns needs CAP_SYS_ADMIN" end
  if H.sh("command -v ip 2>/dev/null") == "" then return "iproute2 (ip) is not installed" end
  return nil
end

-- Removes namespaces (and with them their veths) left by chaos runs whose
-- driver is gone.
function N.sweep()
  for name in H.sh("ip netns list 2>/dev/null"):gmatch("(lsc%d+x%d+)") do
    local pid = tonumber(name:match("^lsc(%d+)x"))
    if pid and not pid_alive(pid) then run("ip netns del " .. name) end
  end
end

-- The third octets of the 169.254.0.0/16 addresses in use here.
function N.used_octets()
  local used = {}
  for a in H.sh("ip -4 -o addr show 2>/dev/null"):gmatch("169%.254%.(%d+)%.%d+/") do used[tonumber(a)] = true end
  return used
end

-- Makes namespace number `index` (0..62) of driver `pid`, on
-- 169.254.octet.(4 index + 1..2)/30; returns the object with .host (the
-- host end's address: what the node dials) and .name.
function N.create(pid, octet, index)
  local self = setmetatable({ name = ("lsc%dx%d"):format(pid, index) }, N)
  self.veth_host = ("lc%dh%d"):format(pid, index)
  self.veth_ns = ("lc%dn%d"):format(pid, index)
  assert(#self.veth_host <= 15, "veth name too long: " .. self.veth_host)
  self.host = ("169.254.%d.%d"):format(octet, 4 * index + 1)
  self.peer = ("169.254.%d.%d"):format(octet, 4 * index + 2)
  local steps = {
    "ip netns add " .. self.name,
    ("ip link add %s type veth peer name %s"):format(self.veth_host, self.veth_ns),
    ("ip link set %s netns %s"):format(self.veth_ns, self.name),
    ("ip addr add %s/30 dev %s"):format(self.host, self.veth_host),
    ("ip link set %s up"):format(self.veth_host),
    ("ip netns exec %s ip addr add %s/30 dev %s"):format(self.name, self.peer, self.veth_ns),
    ("ip netns exec %s ip link set %s up"):format(self.name, self.veth_ns),
    ("ip netns exec %s ip link set lo up"):format(self.name),
  }
  for _, cmd in ipairs(steps) do
    local ok, out = run(cmd)
    if not ok then
      self:destroy()
      error("netns setup failed: " .. cmd .. ": " .. out)
    end
  end
  return self
end

-- The argv prefix that runs a command inside the namespace (ip execs it,
-- so the pid H.spawn returns is the command's own).
function N:wrap()
  return { "ip", "netns", "exec", self.name }
end

function N:cut()
  assert(run(("ip link set %s down"):format(self.veth_host)))
end

function N:heal()
  assert(run(("ip link set %s up"):format(self.veth_host)))
end

-- Deleting the namespace deletes its veth end, and so the pair.
function N:destroy()
  run("ip link del " .. self.veth_host)
  run("ip netns del " .. self.name)
end

return N
