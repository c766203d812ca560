-- The results: one row per figure, store and metric, ours next to
-- docker/leadership with the ratio and the issue's target; printed as a
-- table and written to bench/RESULTS.md with the machine it ran on.
local P = require "proc"

local R = { rows = {} }

-- row: { figure, store, metric, unit, ours, peer, target = { ratio = x }
-- (ours/peer at most x) or { ours = x } (ours at most x), note }
function R.add(row)
  local t = row.target
  local numbers = type(row.ours) == "number" and type(row.peer) == "number"
  if numbers and row.peer ~= 0 then row.ratio = row.ours / row.peer end
  -- the peer did not finish within a bound (">120"): the ratio is below
  -- ours / bound, and a target is met if that bound meets it
  local bound = type(row.peer) == "string" and tonumber(row.peer:match("^>(%S+)"))
  if type(row.ours) == "number" and bound then
    row.ratio, row.ratio_below = row.ours / bound, true
  end
  if t and t.ratio then
    row.target_text = ("≤ %g×"):format(t.ratio)
    if row.ratio then row.met = row.ratio <= t.ratio end
  elseif t and t.ours then
    row.target_text = ("≤ %g %s"):format(t.ours, row.unit)
    if type(row.ours) == "number" then row.met = row.ours <= t.ours end
  end
  R.rows[#R.rows + 1] = row
  io.stdout:write(("  %-28s %-9s %-26s ours %-12s peer %-12s\n"):format(row.figure, row.store, row.metric,
    R.value(row.ours, row.unit), R.value(row.peer, row.unit)))
  io.stdout:flush()
end

function R.value(v, unit)
  if v == nil then return "n/a" end
  if type(v) == "string" then return v end
  if unit == "ms" or unit == "MB" then return ("%.1f"):format(v) end
  if unit == "s" or unit == "CPU s" then return ("%.2f"):format(v) end
  if unit == "req/s" then return ("%." .. (v < 10 and 1 or 0) .. "f"):format(v) end
  if unit == "count" or unit == "conns" then return ("%.0f"):format(v) end
  return ("%g"):format(v)
end

local HEAD = { "figure", "store", "metric", "unit", "ours", "docker/leadership", "ratio", "target", "met" }

local function cells(row)
  return {
    row.figure, row.store, row.metric, row.unit or "", R.value(row.ours, row.unit), R.value(row.peer, row.unit),
    row.ratio and ((row.ratio_below and "<" or "") .. ("%.3f"):format(row.ratio)) or "", row.target_text or "",
    row.met == true and "yes" or row.met == false and "NO" or (row.target_text and "?" or ""),
  }
end

-- Display width: the target column holds "≤" (3 bytes, 1 column).
local function width(s) return utf8.len(s) or #s end

function R.text()
  local all = { HEAD }
  for _, row in ipairs(R.rows) do all[#all + 1] = cells(row) end
  local widths = {}
  for _, r in ipairs(all) do
    for i, c in ipairs(r) do widths[i] = math.max(widths[i] or 0, width(c)) end
  end
  local lines = {}
  for n, r in ipairs(all) do
    local parts = {}
    for i, c in ipairs(r) do parts[i] = c .. (" "):rep(widths[i] - width(c)) end
    lines[#lines + 1] = table.concat(parts, "  ")
    if n == 1 then
      local rule = {}
      for i = 1, #widths do rule[i] = ("-"):rep(widths[i]) end
      lines[#lines + 1] = table.concat(rule, "  ")
    end
  end
  return table.concat(lines, "\n") .. "\n"
end

function R.markdown()
  local lines = { "| " .. table.concat(HEAD, " | ") .. " |", "|" .. ("---|"):rep(#HEAD) }
  for _, row in ipairs(R.rows) do lines[#lines + 1] = "| " .. table.concat(cells(row), " | ") .. " |" end
  return table.concat(lines, "\n") .. "\n"
end

local function trim(s) return (s or ""):gsub("^%s+", ""):gsub("%s+$", "") end

local function package_version(name)
  local v = trim(P.sh(("dpkg-query -W -f='${Version}' %s 2>/dev/null"):format(name)))
  return v ~= "" and v or "not installed"
end

-- What the numbers ran on.
function R.machine(servers)
  local cpuinfo = P.read("/proc/cpuinfo") or ""
  local meminfo = P.read("/proc/meminfo") or ""
  local m = {
    { "cores (nproc)", trim(P.sh("nproc")) },
    { "CPU", trim(cpuinfo:match("model name%s*:%s*([^\n]+)")) },
    { "memory", ("%.1f GiB"):format((tonumber(meminfo:match("MemTotal:%s*(%d+)")) or 0) / 1048576) },
    { "kernel", trim(P.sh("uname -sr")) },
    { "OS", "Debian " .. trim(P.read("/etc/debian_version")) },
    { "leadership", trim(P.sh("git rev-parse --short HEAD 2>/dev/null")) ..
      (trim(P.sh("git status --porcelain -- runtime backends lua 2>/dev/null")) ~= "" and " (+ uncommitted changes)" or "") },
    { "Lua", trim(P.sh("lua5.4 -v 2>&1")) },
    { "libevent / libcurl / libzookeeper-mt", table.concat({ package_version("libevent-dev"),
      package_version("libcurl4-openssl-dev"), package_version("libzookeeper-mt-dev") }, " / ") },
    { "docker/leadership (Debian)", package_version("golang-github-docker-leadership-dev") },
    { "docker/libkv (Debian)", package_version("golang-github-docker-libkv-dev") },
    { "Go", trim(P.sh("go version 2>/dev/null")) },
  }
  for _, s in ipairs(servers) do m[#m + 1] = { s.name .. " server", s.version or "?" } end
  -- other work on the machine skews the CPU-bound figures: say how much
  m[#m + 1] = { "load average at the end (1, 5, 15 min)", (P.read("/proc/loadavg") or ""):match("^(%S+ %S+ %S+)") or "?" }
  return m
end

function R.write(path, info)
  local out = {}
  local function add(s) out[#out + 1] = s end
  add("# Benchmarks: leadership vs docker/leadership\n")
  add("Written by `make bench` (bench/run) on " .. os.date("!%Y-%m-%d %H:%M UTC") ..
    ". Ours and docker/leadership ran in the same run, on the same servers; ratio = ours / docker/leadership" ..
    " (below 1: ours is smaller or faster).\n")
  add("## Machine\n")
  add("| | |\n|---|---|")
  for _, kv in ipairs(info.machine) do add(("| %s | %s |"):format(kv[1], kv[2])) end
  add("\n## Settings\n")
  add("```")
  for _, kv in ipairs(info.settings) do add(("%s=%s"):format(kv[1], kv[2])) end
  add("```\n")
  add("## Results\n")
  add(R.markdown())
  if info.notes and #info.notes > 0 then
    add("## Notes from this run\n")
    for _, n in ipairs(info.notes) do add("- " .. n) end
    add("")
  end
  add(info.method)
  local f = assert(io.open(path, "w"))
  f:write(table.concat(out, "\n"))
  f:close()
end

return R
