-- N `leadership run` processes under spec/support/stamp_policy.lua on one
-- store, and the checks every backend's process specs share: who leads,
-- handover times, and the work stamps (no overlap, terms rising, nothing
-- from a leader after it lost).
local C = {}
C.__index = C

-- opts: store (URL), ttl, key, nodes (count, default 3), env (extra),
-- dir (default: a new temp dir)
function C.start(opts)
  local self = setmetatable({
    dir = opts.dir or H.tmpdir("cluster"), store = opts.store, ttl = opts.ttl or 2,
    key = opts.key or ("spec/" .. math.random(1e9)), procs = {}, names = {},
  }, C)
  self.stamps = self.dir .. "/stamps"
  for i = 1, opts.nodes or 3 do
    self:add("node-" .. i, opts.env)
    if opts.stagger ~= false then os.execute("sleep 0.1") end
  end
  return self
end

-- `wrap` (optional): an argv prefix the node runs under, e.g. the
-- `ip netns exec NS` of a node the chaos run can cut off.
function C:add(name, env, wrap)
  local e = { STORE = self.store, KEY = self.key, TTL = tostring(self.ttl), STAMP_FILE = self.stamps }
  for k, v in pairs(env or {}) do e[k] = v end
  local proc = self:spawn(name, e, wrap, name)
  self.names[#self.names + 1] = name
  return proc
end

function C:spawn(name, env, wrap, file)
  local argv = {}
  for _, a in ipairs(wrap or {}) do argv[#argv + 1] = a end
  for _, a in ipairs({ H.bin, "run", "spec/support/stamp_policy.lua", "--node", name, "--log-level", "info" }) do
    argv[#argv + 1] = a
  end
  local proc = H.spawn(argv, { env = env, stdout = self.dir .. "/" .. file .. ".out",
                               stderr = self.dir .. "/" .. file .. ".err" })
  proc.name, proc.env, proc.wrap = name, env, wrap
  proc.incarnation = (self.procs[name] and self.procs[name].incarnation or 0) + 1
  self.procs[name] = proc
  return proc
end

-- Starts node `name` again (after a kill) with the same settings; its
-- output goes to "<name>.<n>.out", so every incarnation's lines stay.
function C:restart(name)
  local old = self.procs[name]
  return self:spawn(name, old.env, old.wrap, ("%s.%d"):format(name, old.incarnation + 1))
end

-- The lines a node printed ("elected 3 <time>", "lost session <time>", ...).
function C:lines(name)
  local text = H.read(self.procs[name].stdout) or ""
  local out = {}
  for line in text:gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

-- The node whose last elected/lost line is "elected", among live ones.
function C:leaders()
  local found = {}
  for _, name in ipairs(self.names) do
    local proc = self.procs[name]
    local last
    for _, line in ipairs(self:lines(name)) do
      if line:match("^elected ") or line:match("^lost ") then last = line end
    end
    if last and last:match("^elected") and H.alive(proc) then found[#found + 1] = name end
  end
  return found
end

-- Waits for exactly one leader other than `except`; returns it and the
-- wall time its "elected" line carries.
function C:wait_leader(timeout, except)
  local name = H.wait_until(function()
    -- a paused old leader still looks elected: look past it
    local others = {}
    for _, l in ipairs(self:leaders()) do
      if l ~= except then others[#others + 1] = l end
    end
    if #others == 1 then return others[1] end
  end, timeout or 10, 0.01)
  if not name then return nil end
  local at
  for _, line in ipairs(self:lines(name)) do
    local t = line:match("^elected %d+ ([%d.]+)")
    if t then at = tonumber(t) end
  end
  return name, at
end

function C:proc(name) return self.procs[name] end

-- Parses the stamps: list of { t, node, term [, deadline] } in file
-- order (deadline: the wall-clock local deadline, with STAMP_DEADLINE).
function C:read_stamps()
  local list = {}
  for line in (H.read(self.stamps) or ""):gmatch("[^\n]+") do
    local t, node, term, deadline = line:match("^([%d.]+) (%S+) (%d+) ?([%d.]*)$")
    if t then
      list[#list + 1] = { t = tonumber(t), node = node, term = tonumber(term), deadline = tonumber(deadline) }
    end
  end
  return list
end

-- Checks the history: each term is one node's; leadership intervals
-- (first to last stamp of a term) never overlap; terms strictly rise in
-- time. Returns nil or a description of the first violation.
function C:check_stamps()
  local stamps = self:read_stamps()
  local intervals, order = {}, {}
  for _, s in ipairs(stamps) do
    local iv = intervals[s.term]
    if not iv then
      iv = { term = s.term, node = s.node, first = s.t, last = s.t }
      intervals[s.term] = iv
      order[#order + 1] = iv
    elseif iv.node ~= s.node then
      return ("term %d stamped by both %s and %s"):format(s.term, iv.node, s.node)
    end
    iv.first, iv.last = math.min(iv.first, s.t), math.max(iv.last, s.t)
  end
  table.sort(order, function(a, b) return a.first < b.first end)
  for i = 2, #order do
    local prev, cur = order[i - 1], order[i]
    if cur.term <= prev.term then
      return ("term %d (%s) began after term %d (%s): terms not rising"):format(cur.term, cur.node, prev.term, prev.node)
    end
    if cur.first <= prev.last then
      return ("overlap: %s term %d worked until %.3f, %s term %d began at %.3f"):format(
        prev.node, prev.term, prev.last, cur.node, cur.term, cur.first)
    end
  end
  return nil, #order, #stamps
end

function C:stop()
  for _, name in ipairs(self.names) do
    local proc = self.procs[name]
    if H.alive(proc) then H.signal(proc, "CONT"); H.signal(proc, "KILL") end
  end
end

-- For failure messages: every node's output.
function C:dump()
  local parts = {}
  for _, name in ipairs(self.names) do
    parts[#parts + 1] = "--- " .. name .. "\n" .. (H.read(self.procs[name].stdout) or "") ..
      (H.read(self.procs[name].stderr) or "")
  end
  return table.concat(parts, "\n")
end

-- The process-level scenarios every backend must pass. `make_store()`
-- returns a store URL; `limits` gives ttl, kill9 (seconds allowed for a
-- kill -9 handover) and pause (how long to SIGSTOP the leader). `spec` is
-- the calling spec's environment (describe, it, after_each, assert).
function C.describe_processes(spec, backend, make_store, limits)
  local describe, it, after_each, assert = spec.describe, spec.it, spec.after_each, spec.assert
  describe(backend .. " across processes", function()
    local cluster
    after_each(function() if cluster then cluster:stop() end end)

    it("elects exactly one leader among three, hands over on SIGTERM", function()
      cluster = C.start { store = make_store(), ttl = limits.ttl }
      local first = cluster:wait_leader(limits.elect or 10)
      assert.truthy(first, cluster:dump())
      os.execute("sleep 0.3")
      assert.equal(1, #cluster:leaders(), cluster:dump())
      local t0 = require("leadership").time()
      H.signal(cluster:proc(first), "TERM")
      local second, at = cluster:wait_leader(limits.ttl + 2, first)
      assert.truthy(second, cluster:dump())
      local handover = at - t0
      io.stderr:write(("\n[%s] SIGTERM handover: %.0f ms\n"):format(backend, handover * 1000))
      assert.is_true(handover < 1.0, ("SIGTERM handover took %.3f s"):format(handover))
      assert.is_true(H.wait_until(function() return not H.alive(cluster:proc(first)) end, 5))
      os.execute("sleep 0.2")
      assert.is_nil(cluster:check_stamps())
    end)

    it("hands over after kill -9 within the limit", function()
      cluster = C.start { store = make_store(), ttl = limits.ttl }
      local first = cluster:wait_leader(limits.elect or 10)
      assert.truthy(first, cluster:dump())
      local t0 = require("leadership").time()
      H.signal(cluster:proc(first), "KILL")
      local second, at = cluster:wait_leader(limits.kill9 + 3, first)
      assert.truthy(second, cluster:dump())
      local handover = at - t0
      io.stderr:write(("\n[%s] kill -9 handover: %.0f ms\n"):format(backend, handover * 1000))
      assert.is_true(handover <= limits.kill9, ("kill -9 handover took %.3f s"):format(handover))
      assert.is_nil(cluster:check_stamps())
    end)

    it("a leader paused past its ttl never runs leader code again; terms rise", function()
      cluster = C.start { store = make_store(), ttl = limits.ttl }
      local first = cluster:wait_leader(limits.elect or 10)
      assert.truthy(first, cluster:dump())
      local proc = cluster:proc(first)
      H.signal(proc, "STOP")
      local second = cluster:wait_leader(limits.pause + 5, first)
      os.execute(("sleep %g"):format(math.max(0, limits.pause - 1)))
      H.signal(proc, "CONT")
      os.execute("sleep 1")
      assert.truthy(second, cluster:dump())
      local violation = cluster:check_stamps()
      assert.is_nil(violation, (violation or "") .. "\n" .. cluster:dump())
      -- the resumed one stepped down before doing any work
      local lost
      for _, line in ipairs(cluster:lines(first)) do
        if line:match("^lost") then lost = line end
      end
      assert.truthy(lost, cluster:dump())
      io.stderr:write(("\n[%s] paused leader on resume: %s\n"):format(backend, lost))
    end)
  end)
end

return C
