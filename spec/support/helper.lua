-- Shared by every spec (busted --helper): finds the build, spawns and
-- watches processes, makes temp dirs, picks free loopback ports, and
-- decides what a missing server means (CI: failure; locally: loud skip).
local H = {}

H.build = os.getenv("LEADERSHIP_BUILD") or "build"
H.bin = H.build .. "/leadership"
package.path = H.build .. "/lua/?.lua;" .. H.build .. "/lua/?/init.lua;spec/support/?.lua;" .. package.path
package.cpath = H.build .. "/lua/?.so;" .. package.cpath

local function sh(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  p:close()
  return out
end
H.sh = sh

function H.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

function H.tmpdir(tag)
  return (sh("mktemp -d /tmp/leadership-" .. (tag or "spec") .. ".XXXXXX"):gsub("%s+$", ""))
end

function H.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

function H.write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- Starts argv (a list) in the background with stdout/stderr to files;
-- returns { pid =, stdout =, stderr = }.
function H.spawn(argv, opts)
  opts = opts or {}
  -- a directory only when the caller gave neither file
  local dir = opts.dir or ((not opts.stdout or not opts.stderr) and H.tmpdir("proc") or nil)
  local words = {}
  for i, a in ipairs(argv) do words[i] = H.quote(a) end
  local env = {}
  for k, v in pairs(opts.env or {}) do env[#env + 1] = k .. "=" .. H.quote(v) end
  local stdout, stderr = opts.stdout or dir .. "/stdout", opts.stderr or dir .. "/stderr"
  local cmd = ("%s %s >%s 2>%s </dev/null & echo $!"):format(
    table.concat(env, " "), table.concat(words, " "), H.quote(stdout), H.quote(stderr))
  local pid = tonumber(sh(cmd):match("%d+"))
  return { pid = pid, stdout = stdout, stderr = stderr, dir = dir }
end

function H.signal(proc, sig)
  os.execute(("kill -%s %d 2>/dev/null"):format(sig, proc.pid))
end

function H.alive(proc)
  -- a zombie counts as dead; read /proc rather than run ps (which hangs
  -- under the sanitizer runtime that `make asan test` preloads)
  local stat = H.read(("/proc/%d/stat"):format(proc.pid))
  local state = stat and stat:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

-- Polls fn() every `interval` seconds until it returns a truthy value or
-- `timeout` seconds pass; returns that value or nil.
function H.wait_until(fn, timeout, interval)
  local clock = require "leadership".now
  local deadline = clock() + timeout
  repeat
    local v = fn()
    if v then return v end
    os.execute(("sleep %g"):format(interval or 0.05))
  until clock() > deadline
  return fn()
end

function H.stop(proc, timeout)
  if not proc or not H.alive(proc) then return end
  H.signal(proc, "TERM")
  if not H.wait_until(function() return not H.alive(proc) end, timeout or 5) then
    H.signal(proc, "KILL")
  end
end

-- A TCP port on 127.0.0.1 that nothing listens on, below the kernel's
-- range for outgoing ports: a busy process (a fuzzer beside the tests)
-- may take one of those between this check and the bind.
function H.free_port()
  local used = sh("ss -Htan 2>/dev/null")
  local ephemeral = tonumber(sh("cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null"):match("%d+") or "32768")
  for _ = 1, 200 do
    local port = math.random(10000, ephemeral - 1)
    if not used:find(":" .. port .. "%s") then return port end
  end
  error("no free port found")
end

-- True if `binary` can be run. Missing in CI fails the spec; locally it
-- is a loud skip (busted's pending), never a pass.
function H.have(binary, pending)
  if sh("command -v " .. H.quote(binary) .. " 2>/dev/null") ~= "" then return true end
  if os.getenv("CI") then
    error(binary .. " is not installed: CI must run every spec (run ./bootstrap.sh test)")
  end
  io.stderr:write("\n*** SKIPPED: " .. binary .. " is not installed ***\n")
  if pending then pending(binary .. " is not installed: SKIPPED") end
  return false
end

math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)") or "0", 16) or 0))
_G.H = H
return H
