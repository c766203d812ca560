-- Figure 4, scale: N elections on distinct keys in one process. Time from
-- the process's "start" line to "all-elected"; then a steady state of
-- ctx.settings.steady seconds: CPU seconds, TCP connections to the store,
-- store requests per second (the server's own counters), peak RSS.
-- One process at a time: CPU and the server's counters are whole-machine.
local P = require "proc"

local function measure(ctx, side, store, n)
  local s = ctx.settings
  local prefix = ctx.key("scale" .. n)
  local name = ("scale%d-%s-%s"):format(n, store.name, side.name)
  local proc = P.spawn(side.many(store.url, prefix, n, s.scale_ttl), ctx.dir, name, side.env)
  local m = {}
  local start = P.wait_line(proc, "start", nil, 10)
  local all = P.wait(function() return P.find(proc, "all-elected") or not P.alive(proc) end, s.elect_timeout)
  if all == true then all = nil end
  if start and all then
    m.elect = all.t - start.t
  else
    local last
    for _, l in ipairs(P.lines(proc)) do if l.event == "progress" then last = l end end
    ctx.note(("%s: not all %d elected %s (last progress: %s)"):format(name, n,
      P.alive(proc) and ("within " .. s.elect_timeout .. " s") or "before it died",
      last and table.concat(last.words, " ") or "none"))
    m.elect = ">" .. s.elect_timeout
  end
  if P.alive(proc) then
    P.sleep(2) -- the last acquisitions' follow-up requests
    local cpu0, req0, t0 = P.cpu(proc), store.requests(), require("leadership").now()
    P.sleep(s.steady / 2)
    m.connections = P.connections(proc, store.port)
    P.sleep(s.steady / 2)
    local cpu1, req1, t1 = P.cpu(proc), store.requests(), require("leadership").now()
    local st = P.status(proc)
    if cpu1 and st then
      m.cpu = cpu1 - cpu0
      m.rps = (req1 - req0) / (t1 - t0)
      m.rss = st.hwm / 1024
      m.rss_now = st.rss / 1024
    end
  end
  if not m.cpu then ctx.note(name .. ": the process died (see " .. proc.stderr .. ")") end
  P.stop(proc, 15)
  -- the last progress line, said on SIGTERM: keys held at the end, and how
  -- many times a leader lost its key before it (none should, on a healthy
  -- store)
  for _, l in ipairs(P.lines(proc)) do
    if l.event == "progress" then
      local words = table.concat(l.words, " ")
      m.leaders, m.lost = tonumber(words:match("leaders=(%d+)")), tonumber(words:match("lost=(%d+)"))
    end
  end
  store.clear(prefix)
  P.sleep(2)
  return m
end

return function(ctx)
  local s = ctx.settings
  for _, store in ipairs(ctx.servers) do
    for _, n in ipairs(s.scale) do
      local r = {}
      for _, side in ipairs(ctx.sides) do r[side.name] = measure(ctx, side, store, n) end
      local big = n >= 10000
      local etcd = store.name == "etcd"
      local figure = ("4 scale, %d elections"):format(n)
      local function add(metric, unit, field, target)
        local o, p = r.ours[field], r.peer[field]
        ctx.report.add { figure = figure, store = store.name, metric = metric, unit = unit, ours = o, peer = p,
          target = big and target or nil }
      end
      add("time to elect all", "s", "elect", { ratio = 0.5 })
      add("peak RSS", "MB", "rss", { ratio = etcd and 0.1 or 0.2 })
      add("RSS after steady state", "MB", "rss_now")
      add(("CPU over %g s steady"):format(s.steady), "CPU s", "cpu", etcd and { ratio = 0.05 } or nil)
      add("TCP connections to store", "conns", "connections", etcd and { ours = 4 } or nil)
      add("store requests/s steady", "req/s", "rps")
      add("keys held at the end", "count", "leaders")
      add("leaderships lost before the end", "count", "lost")
    end
  end
end
