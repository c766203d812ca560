-- Processes for the bench: spawning with output to files, reading their
-- timestamped lines, sending signals with a known send time, and what
-- /proc and ss say about them (RSS, CPU, context switches, connections).
local L = require "leadership"

local P = {}

local function sh(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  p:close()
  return out
end
P.sh = sh

function P.quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
P.read = read

-- Waits until fn() is truthy or `timeout` seconds pass; returns its value
-- (nil on timeout). Inside a coroutine it yields between polls, so the
-- runner can drive several scenarios at once (see P.parallel); outside it
-- runs our loop for a few milliseconds, which costs no fork.
function P.wait(fn, timeout)
  local deadline = L.now() + timeout
  repeat
    local v = fn()
    if v then return v end
    if coroutine.isyieldable() then coroutine.yield() else L.sleep(0.005) end
  until L.now() > deadline
  return fn()
end

-- Sleeps `s` seconds, yielding when inside P.parallel.
function P.sleep(s)
  local deadline = L.now() + s
  P.wait(function() return L.now() >= deadline end, s + 1)
end

-- Runs each function as a coroutine, round robin, until all return.
function P.parallel(fns)
  local cos = {}
  for i, fn in ipairs(fns) do cos[i] = coroutine.create(fn) end
  local live = #cos
  while live > 0 do
    live = 0
    for _, co in ipairs(cos) do
      if coroutine.status(co) ~= "dead" then
        local ok, err = coroutine.resume(co)
        if not ok then error(debug.traceback(co, err), 0) end
        if coroutine.status(co) ~= "dead" then live = live + 1 end
      end
    end
    if live > 0 then L.sleep(0.005) end
  end
end

-- Starts argv with stdout/stderr to files in `dir`, as `name`. The shell
-- runs it as its own background child, so $! is the process itself.
function P.spawn(argv, dir, name, env)
  local words = {}
  for i, a in ipairs(argv) do words[i] = P.quote(a) end
  local prefix = {}
  for k, v in pairs(env or {}) do prefix[#prefix + 1] = k .. "=" .. P.quote(v) end
  local proc = { name = name, stdout = dir .. "/" .. name .. ".out", stderr = dir .. "/" .. name .. ".err" }
  local cmd = ("%s %s >%s 2>%s </dev/null & echo $!"):format(table.concat(prefix, " "),
    table.concat(words, " "), P.quote(proc.stdout), P.quote(proc.stderr))
  proc.pid = assert(tonumber(sh(cmd):match("%d+")), "spawn failed: " .. cmd)
  return proc
end

-- The process's lines as { t = wall time, event = word, words = {...} }.
function P.lines(proc)
  local out = {}
  for line in (read(proc.stdout) or ""):gmatch("[^\n]+") do
    local t, event, rest = line:match("^(%d+%.%d+) (%S+) ?(.*)$")
    if t then
      local words = {}
      for w in rest:gmatch("%S+") do words[#words + 1] = w end
      out[#out + 1] = { t = tonumber(t), event = event, words = words }
    end
  end
  return out
end

-- The first line with `event` (and first word `word`, if given) after
-- wall time `after`, or nil.
function P.find(proc, event, word, after)
  for _, l in ipairs(P.lines(proc)) do
    if l.event == event and (word == nil or l.words[1] == word) and l.t > (after or 0) then return l end
  end
end

-- Waits for such a line; nil on timeout.
function P.wait_line(proc, event, word, timeout, after)
  return P.wait(function() return P.find(proc, event, word, after) end, timeout)
end

function P.alive(proc)
  local stat = read("/proc/" .. proc.pid .. "/stat")
  return stat ~= nil and not stat:match("^%d+ %b() [ZX]")
end

-- A signal whose send time is known to within a pipe wake-up: a shell
-- is started beforehand and blocks on read; fire() stamps the wall time,
-- writes one byte, and the shell's builtin kill runs. Returns a table
-- with fire() -> send time.
function P.killer(proc, sig)
  local pipe = assert(io.popen(("read x; kill -%s %d 2>/dev/null"):format(sig, proc.pid), "w"))
  P.sleep(0.05) -- let the shell reach its read
  return {
    fire = function()
      local t = L.time()
      pipe:write("\n")
      pipe:flush()
      pipe:close()
      return t
    end,
  }
end

function P.signal(proc, sig) os.execute(("kill -%s %d 2>/dev/null"):format(sig, proc.pid)) end

-- SIGTERM, then SIGKILL if it has not gone within `grace` seconds.
function P.stop(proc, grace)
  if not P.alive(proc) then return end
  P.signal(proc, "TERM")
  if not P.wait(function() return not P.alive(proc) end, grace or 5) then
    P.signal(proc, "KILL")
    P.wait(function() return not P.alive(proc) end, 2)
  end
end

local CLK_TCK = tonumber(sh("getconf CLK_TCK")) or 100

-- CPU seconds (user + system, all threads, live and exited) so far.
function P.cpu(proc)
  local stat = read("/proc/" .. proc.pid .. "/stat")
  if not stat then return nil end
  local fields = {}
  for f in stat:gsub("^.-%) ", ""):gmatch("%S+") do fields[#fields + 1] = f end
  -- after "pid (comm) ": state is field 1, utime 12, stime 13
  return (tonumber(fields[12]) + tonumber(fields[13])) / CLK_TCK
end

-- Memory in kB: rss (VmRSS), hwm (VmHWM, peak RSS), private (USS), and
-- the thread count.
function P.status(proc)
  local text = read("/proc/" .. proc.pid .. "/status")
  if not text then return nil end
  -- private pages (USS): what the process costs beyond shared libraries
  local rollup = read("/proc/" .. proc.pid .. "/smaps_rollup") or ""
  local private = (tonumber(rollup:match("Private_Clean:%s*(%d+)")) or 0)
    + (tonumber(rollup:match("Private_Dirty:%s*(%d+)")) or 0)
  return {
    private = private,
    rss = tonumber(text:match("VmRSS:%s*(%d+)")),
    hwm = tonumber(text:match("VmHWM:%s*(%d+)")),
    threads = tonumber(text:match("Threads:%s*(%d+)")),
  }
end

-- Context switches of every live thread (voluntary + involuntary): each
-- is a wake-up, since an idle thread only switches out to sleep.
function P.switches(proc)
  local total = 0
  local tasks = sh("ls /proc/" .. proc.pid .. "/task 2>/dev/null")
  for tid in tasks:gmatch("%d+") do
    local text = read(("/proc/%d/task/%s/status"):format(proc.pid, tid)) or ""
    total = total + (tonumber(text:match("\nvoluntary_ctxt_switches:%s*(%d+)")) or 0)
      + (tonumber(text:match("nonvoluntary_ctxt_switches:%s*(%d+)")) or 0)
  end
  return total
end

-- TCP segments with data the process has sent to 127.0.0.1:port over its
-- open connections (ss -i data_segs_out): a request or a ping is one. Not
-- /proc/<pid>/io syscw, which counts write() but not send().
function P.segments_out(proc, port)
  local out = P.sh(("ss -Htinp state established dst 127.0.0.1:%d 2>/dev/null"):format(port))
  local total, mine = 0, false
  for line in out:gmatch("[^\n]+") do
    if line:match("^%s") then
      if mine then total = total + (tonumber(line:match("data_segs_out:(%d+)")) or 0) end
    else
      mine = line:find("pid=" .. proc.pid .. ",", 1, true) ~= nil
    end
  end
  return total
end

-- Established TCP connections from the process to 127.0.0.1:port.
function P.connections(proc, port)
  local out = sh(("ss -Htnp state established dst 127.0.0.1:%d 2>/dev/null"):format(port))
  local n = 0
  for line in out:gmatch("[^\n]+") do
    if line:find("pid=" .. proc.pid .. ",", 1, true) then n = n + 1 end
  end
  return n
end

-- Wake-ups of an idle process, classified: strace -f -ttt of its blocking
-- waits and sends for `seconds`, grouped into bursts (events closer than
-- 100 ms). A burst with a renewal (a send whose first bytes match one of
-- `renewals`, Lua patterns; any send if nil) is a renewal with its reply;
-- any other burst is a wake-up between renewals. Started in the
-- background; collect() returns { bursts, between } once it has ended.
local BURST_GAP = 0.1
local WAITS = "epoll_wait,epoll_pwait,poll,ppoll,select,pselect6,futex,nanosleep,clock_nanosleep"
local SENDS = { sendto = true, sendmsg = true, write = true, writev = true }

function P.trace_wakeups(proc, seconds, dir, renewals)
  local out = ("%s/%s.strace"):format(dir, proc.name)
  local tracer = P.spawn({ "timeout", "-s", "INT", tostring(seconds), "strace", "-f", "-ttt", "-s", "48",
    "-o", out, "-e", "trace=" .. WAITS .. ",sendto,sendmsg,write,writev", "-p", tostring(proc.pid) },
    dir, proc.name .. "-strace")
  local function is_renewal(call)
    if not renewals then return true end
    for _, pattern in ipairs(renewals) do
      if call:find(pattern) then return true end
    end
    return false
  end
  local t = {}
  function t.collect()
    P.wait(function() return not P.alive(tracer) end, seconds + 10)
    -- the first burst is strace attaching: it prints the waits under way
    local bursts, between, last, renewed, first = 0, 0, nil, false, true
    local function close_burst()
      if last and not first then
        bursts = bursts + 1
        if not renewed then between = between + 1 end
      end
      first = last == nil
    end
    for line in (read(out) or ""):gmatch("[^\n]+") do
      local ts, rest = line:match("^%d+%s+(%d+%.%d+)%s+(.*)$")
      ts = tonumber(ts)
      if ts then
        local name = rest:match("^<%.%.%. (%w+) resumed>") or rest:match("^(%w+)%(")
        if last == nil or ts - last > BURST_GAP then
          close_burst()
          renewed = false
        end
        last = ts
        if name and SENDS[name] and is_renewal(rest) then renewed = true end
      end
    end
    close_burst()
    return { bursts = bursts, between = between }
  end
  return t
end

return P
