-- Figure 5, idle: one candidate holding leadership and doing nothing, for
-- ctx.settings.idle seconds: RSS, CPU seconds, wake-ups (context switches
-- of all its threads) and requests sent to the store (TCP data segments). The four run at
-- once: idle processes do not disturb each other. Then, for
-- ctx.settings.idle_trace seconds under strace, the wake-ups are sorted
-- into those that come with a request to the store and those between.
local P = require "proc"
local L = require "leadership"

-- What a renewal looks like on the wire: ours keeps its etcd lease alive,
-- docker/libkv refreshes its v2 key's TTL; on ZooKeeper the session is
-- the lease and every send of an idle client is its ping.
local RENEWALS = {
  etcd = { "/v3/lease/keepalive", "PUT /v2/keys/" },
}

return function(ctx)
  local s = ctx.settings
  local procs, results = {}, {}
  for _, store in ipairs(ctx.servers) do
    for _, side in ipairs(ctx.sides) do
      local name = ("idle-%s-%s"):format(store.name, side.name)
      procs[#procs + 1] = { store = store, side = side,
        proc = P.spawn(side.candidate(store.url, ctx.key("idle"), name, s.idle_ttl), ctx.dir, name, side.env) }
    end
  end
  for _, p in ipairs(procs) do
    if not P.wait_line(p.proc, "elected", nil, 20) then ctx.note(p.proc.name .. ": never elected") end
  end
  P.sleep(2)
  for _, p in ipairs(procs) do
    p.cpu0, p.sw0, p.wr0 = P.cpu(p.proc), P.switches(p.proc), P.segments_out(p.proc, p.store.port)
  end
  local t0 = L.now()
  P.sleep(s.idle)
  local dt = L.now() - t0
  for _, p in ipairs(procs) do
    local st = P.status(p.proc)
    if st and p.cpu0 then
      local per_window = s.idle / dt
      results[p.store.name .. p.side.name] = {
        rss = st.rss / 1024, private = st.private / 1024, cpu = P.cpu(p.proc) - p.cpu0,
        wakeups = (P.switches(p.proc) - p.sw0) * per_window,
        writes = (P.segments_out(p.proc, p.store.port) - p.wr0) * per_window,
        threads = st.threads,
      }
    else
      ctx.note(p.proc.name .. ": died while idle (see " .. p.proc.stderr .. ")")
    end
  end
  -- A second window under strace (ptrace would inflate the switch counts
  -- above): which wake-ups come with a request and which come between.
  if s.idle_trace > 0 then
    local traces = {}
    for i, p in ipairs(procs) do
      if P.alive(p.proc) then
        traces[i] = P.trace_wakeups(p.proc, s.idle_trace, ctx.dir, RENEWALS[p.store.name])
      end
    end
    for i, p in ipairs(procs) do
      local r = results[p.store.name .. p.side.name]
      if traces[i] and r then
        local t = traces[i].collect()
        r.bursts, r.between = t.bursts, t.between
      end
    end
  end
  for _, p in ipairs(procs) do P.stop(p.proc, 5) end
  for _, store in ipairs(ctx.servers) do
    local o, p = results[store.name .. "ours"] or {}, results[store.name .. "peer"] or {}
    local figure = ("5 idle leader, %g s, ttl %g"):format(s.idle, s.idle_ttl)
    local function add(metric, unit, field, target)
      ctx.report.add { figure = figure, store = store.name, metric = metric, unit = unit,
        ours = o[field], peer = p[field], target = target }
    end
    add("RSS", "MB", "rss", { ratio = 0.5 })
    add("private memory (USS)", "MB", "private")
    add("CPU", "CPU s", "cpu")
    add("wake-ups (context switches)", "count", "wakeups")
    add("requests sent (TCP data segments)", "count", "writes")
    add("threads", "count", "threads")
    if s.idle_trace > 0 then
      local traced = ("%g s under strace"):format(s.idle_trace)
      add("wake-up bursts, " .. traced, "count", "bursts")
      add("bursts between renewals, " .. traced, "count", "between", { ours = 0 })
    end
    if o.wakeups and o.writes then
      -- a renewal is a timer wake-up, a send, and a wake-up for the reply
      local extra = math.max(0, o.wakeups - 2 * o.writes)
      ctx.report.add { figure = figure, store = store.name, metric = "wake-ups beyond 2 per request", unit = "count",
        ours = extra, peer = p.wakeups and p.writes and math.max(0, p.wakeups - 2 * p.writes),
        target = s.idle_trace <= 0 and { ours = 0 } or nil }
    end
  end
end
