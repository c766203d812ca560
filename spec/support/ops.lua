-- Helpers of the operations specs (exec, leader/watch, metrics): process
-- groups, exit statuses, HTTP through curl, the exec test command.
local O = {}

-- Starts argv like H.spawn, through a shell that records the exit status:
-- returns the proc ({ pid = the command's own pid, ... }) and status(),
-- which is nil while it runs.
function O.spawn_status(argv, opts)
  opts = opts or {}
  local dir = opts.dir or H.tmpdir("proc")
  local base = dir .. "/" .. (opts.name or "cmd")
  local words = { "sh", "-c", '"$@" & echo $! > "$0.pid"; wait $!; echo $? > "$0.status"', base }
  for _, a in ipairs(argv) do words[#words + 1] = a end
  local shell = H.spawn(words, { dir = dir, env = opts.env, stdout = opts.stdout or base .. ".out",
                                 stderr = opts.stderr or base .. ".err" })
  local pid = H.wait_until(function() return tonumber(H.read(base .. ".pid") or "") end, 5, 0.01)
  assert(pid, "no pid for " .. table.concat(argv, " "))
  local proc = { pid = pid, stdout = shell.stdout, stderr = shell.stderr, dir = dir, shell = shell }
  local function status() return tonumber(H.read(base .. ".status") or "") end
  return proc, status
end

-- Waits up to `timeout` seconds for status() to be known.
function O.wait_status(status, timeout)
  return H.wait_until(status, timeout or 10, 0.02)
end

-- ps and curl run without the sanitizer preload of `make asan test`: with
-- libasan preloaded both hang at start-up (ps on textdomain's lock, every
-- time; curl in a futex, every time).

-- Live (not zombie) processes of process group pgid: a list of pids.
function O.group(pgid)
  local pids = {}
  for pid, group, stat in H.sh("env -u LD_PRELOAD ps -eo pid=,pgid=,stat="):gmatch("(%d+)%s+(%d+)%s+(%S+)") do
    if tonumber(group) == pgid and not stat:match("^Z") then pids[#pids + 1] = tonumber(pid) end
  end
  return pids
end

-- { pid, ppid, pgid, comm } of every process.
function O.processes()
  local list = {}
  for pid, ppid, pgid, comm in H.sh("env -u LD_PRELOAD ps -eo pid=,ppid=,pgid=,comm="):gmatch("(%d+)%s+(%d+)%s+(%d+)%s+(%S+)") do
    list[#list + 1] = { pid = tonumber(pid), ppid = tonumber(ppid), pgid = tonumber(pgid), comm = comm }
  end
  return list
end

function O.pgid_of(pid)
  for _, p in ipairs(O.processes()) do if p.pid == pid then return p.pgid end end
end

-- GET url with curl (for servers of other processes): code, body.
function O.get(url)
  local out = H.sh(("env -u LD_PRELOAD curl -s --max-time 3 -w '\\n%%{http_code}' %s"):format(H.quote(url)))
  local body, code = out:match("^(.*)\n(%d+)$")
  return tonumber(code), body
end

-- GET url served by this very process: curl runs in the background while
-- the loop runs (leadership.sleep), so the server can answer.
function O.get_here(url, method)
  local L = require "leadership"
  local dir = H.tmpdir("curl")
  H.spawn({ "sh", "-c", ('unset LD_PRELOAD; curl -s --max-time 3 %s -o "$0/body" -w "%%{http_code}" "$1" > "$0/code.tmp" && mv "$0/code.tmp" "$0/code"')
            :format(method and ("-X " .. method) or ""), dir, url }, { dir = dir })
  local deadline = L.now() + 5
  local code
  repeat
    L.sleep(0.02)
    code = tonumber(H.read(dir .. "/code") or "")
  until code or L.now() > deadline
  local body = H.read(dir .. "/body") or ""
  os.execute("rm -rf " .. H.quote(dir))
  return code, body
end

-- The value of a sample in Prometheus text, e.g. sample(text,
-- "leadership_is_leader", 'node="a"').
function O.sample(text, name, label_part)
  for line in text:gmatch("[^\n]+") do
    local n, labels, value = line:match("^([%w_]+){(.-)} (%S+)$")
    if n == name and (not label_part or labels:find(label_part, 1, true)) then return tonumber(value) end
  end
end

-- The command of the exec specs, as a shell script in dir. It records
-- "<pid> <key>" in cmd.<node>.<term> and, from a grandchild, work stamps
-- "<wall time> <node> <term>" in stamps every 10 ms. With IGNORE_TERM set
-- the grandchild ignores SIGTERM (only SIGKILL ends it); the script itself
-- records SIGTERM in term.<node>.<term> and exits 0.
function O.exec_script(dir)
  local path = dir .. "/cmd.sh"
  H.write(path, [[
n="$LEADERSHIP_NODE"; t="$LEADERSHIP_TERM"
echo "$$ $LEADERSHIP_KEY" > "$DIR/cmd.$n.$t"
(
  if [ -n "$IGNORE_TERM" ]; then trap '' TERM; fi
  while :; do echo "$(date +%s.%N) $n $t" >> "$DIR/stamps"; sleep 0.01; done
) &
trap 'date +%s.%N > "$DIR/term.$n.$t"; exit 0' TERM
wait
]])
  return path
end

-- Stamps of that script: list of { t, node, term }, in file order.
function O.stamps(dir)
  local list = {}
  for line in (H.read(dir .. "/stamps") or ""):gmatch("[^\n]+") do
    local t, node, term = line:match("^([%d.]+) (%S+) (%d+)$")
    if t then list[#list + 1] = { t = tonumber(t), node = node, term = tonumber(term) } end
  end
  return list
end

-- First and last stamp time of node (optionally of one term).
function O.stamp_span(dir, node, term)
  local first, last
  for _, s in ipairs(O.stamps(dir)) do
    if s.node == node and (not term or s.term == term) then
      first = first or s.t
      last = s.t
    end
  end
  return first, last
end

-- "<pid> <key>" of node's command for term: pid (= its pgid), key.
function O.command_of(dir, node, term)
  local text = H.read(("%s/cmd.%s.%d"):format(dir, node, term))
  if not text then return nil end
  local pid, key = text:match("^(%d+) (%S+)")
  return tonumber(pid), key
end

-- Terms for which node's command was started, ascending.
function O.terms(dir, node)
  local terms = {}
  for name in H.sh("ls " .. H.quote(dir)):gmatch("[^\n]+") do
    local n, t = name:match("^cmd%.(.+)%.(%d+)$")
    if n == node then terms[#terms + 1] = tonumber(t) end
  end
  table.sort(terms)
  return terms
end

-- node's first command: pid (= pgid) and term, once it started.
function O.first_command(dir, node)
  local term = O.terms(dir, node)[1]
  if term then return O.command_of(dir, node, term), term end
end

-- A store URL factory per backend available here: { name = fn() -> url,
-- stop() }. file:// always; redis and etcd when their servers (and
-- backends) are here. Missing ones are reported by `report(name, why)`.
function O.stores(report)
  local L = require "leadership"
  local list = {}
  list[#list + 1] = { name = "file", start = function()
    local dir = H.tmpdir("ops-file")
    return { url = "file://" .. dir, stop = function() os.execute("rm -rf " .. H.quote(dir)) end }
  end }
  local function backend(scheme)
    local ok, err = pcall(L.store, scheme .. "://127.0.0.1:1")
    return ok or not tostring(err):match("unknown store backend")
  end
  if not backend("redis") then
    report("redis", "the redis backend is not built in")
  elseif H.have("redis-server") then
    list[#list + 1] = { name = "redis", start = function()
      local r = require("redis").start()
      return { url = r.url, stop = function() r:stop() end, server = r }
    end }
  else
    report("redis", "redis-server is not installed")
  end
  if not backend("etcd") then
    report("etcd", "the etcd backend is not built in yet")
  elseif H.have("etcd") then
    list[#list + 1] = { name = "etcd", start = function()
      local e = require("etcd").start()
      return { url = e.url, stop = function() e:stop() end, server = e }
    end }
  else
    report("etcd", "etcd is not installed")
  end
  return list
end

return O
