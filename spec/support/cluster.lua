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
    dir = opts.dir or H.tmpdir("cluster"), own_dir = opts.dir == nil, store = opts.store,
    ttl = opts.ttl or 2, key = opts.key or ("spec/" .. math.random(1e9)), procs = {}, names = {},
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

-- A node's "elected <term> <wall time>" lines: { { term, t, node }, ... }.
function C:elections(name)
  local out = {}
  for _, line in ipairs(self:lines(name)) do
    local term, t = line:match("^elected (%d+) ([%d.]+)")
    if term then out[#out + 1] = { term = tonumber(term), t = tonumber(t), node = name } end
  end
  return out
end

-- Every node's elections, by time.
function C:all_elections()
  local all = {}
  for _, name in ipairs(self.names) do
    for _, e in ipairs(self:elections(name)) do all[#all + 1] = e end
  end
  table.sort(all, function(a, b) return a.t < b.t end)
  return all
end

-- Waits for exactly one leader other than `except`; returns it and its
-- latest election ({ term, t }: t is the wall time its "elected" line
-- carries).
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
  local e = self:elections(name)
  return name, e[#e]
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

-- Ends every node: at once (SIGKILL), or with `grace` seconds after a
-- SIGTERM, so each releases what it holds in the store (a Consul session
-- a killed node leaves would expire in the middle of the next spec). A
-- temp dir start() made goes too.
function C:stop(grace)
  for _, name in ipairs(self.names) do
    local proc = self.procs[name]
    if H.alive(proc) then
      H.signal(proc, "CONT")
      if grace then H.stop(proc, grace) else H.signal(proc, "KILL") end
    end
  end
  if self.own_dir and self.dir:match("^/tmp/leadership%-cluster") then
    os.execute("rm -rf " .. H.quote(self.dir))
  end
end

-- check_stamps' verdict with every node's output, for a failure message.
function C:violation()
  local v = self:check_stamps()
  return v and v .. "\n" .. self:dump()
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

-- The process-level scenarios every backend must pass. `spec` is the
-- calling spec's environment (describe, it, after_each, assert).
-- `make_store(scenario)` returns a store URL ("elect", "sigterm", "kill9",
-- "pause": a store may want other options for one of them). `limits`:
--   ttl         the election ttl
--   elect       seconds the first election may take (default 10)
--   sigterm     seconds a SIGTERM handover may take (default 1)
--   rounds      SIGTERM handovers in a row, each stopped node replaced (1)
--   kill9       seconds a kill -9 handover may take
--   kill9_min   and may not undercut (a lock-delay the store must keep)
--   pause       about how long the leader stays SIGSTOPped
--   takeover    seconds after the SIGSTOP by which another leads (pause + 5)
--   lost        the reasons the resumed leader may give (default: any)
--   counted     terms count elections: 1 first, one more per handover
--   sessions    function: how many sessions the store holds (one a node,
--               given up on SIGTERM)
function C.describe_processes(spec, backend, make_store, limits)
  local describe, it, after_each, assert = spec.describe, spec.it, spec.after_each, spec.assert
  local time = require("leadership").time
  local elect = limits.elect or 10

  describe(backend .. " across processes", function()
    local cluster
    after_each(function()
      if cluster then cluster:stop(3) end
      cluster = nil
    end)

    local function start(scenario)
      cluster = C.start { store = make_store(scenario), ttl = limits.ttl }
      local first, e = cluster:wait_leader(elect)
      assert.truthy(first, cluster:dump())
      return first, e
    end

    it("elects exactly one leader among three; the others wait", function()
      start("elect")
      os.execute("sleep 1.5")
      local all = cluster:all_elections()
      assert.equal(1, #all, cluster:dump())
      if limits.counted then assert.equal(1, all[1].term) end
      assert.same({ all[1].node }, cluster:leaders())
      for _, name in ipairs(cluster.names) do assert.is_true(H.alive(cluster:proc(name)), name) end
      assert.is_nil(cluster:violation())
      local stamps = #cluster:read_stamps()
      assert.is_true(stamps > 50, "stamps: " .. stamps)
      if limits.sessions then assert.equal(#cluster.names, limits.sessions()) end
    end)

    local rounds = limits.rounds or 1
    it(("hands over on SIGTERM at once, %d time(s); terms rise"):format(rounds), function()
      local leader = start("sigterm")
      local handovers = {}
      for round = 1, rounds do
        os.execute("sleep 0.3")
        local sessions = limits.sessions and limits.sessions()
        local t0 = time()
        H.signal(cluster:proc(leader), "TERM")
        local successor, e = cluster:wait_leader(limits.ttl + 2, leader)
        assert.truthy(successor, "no successor in round " .. round .. "\n" .. cluster:dump())
        handovers[round] = ("%.0f"):format((e.t - t0) * 1000)
        assert.is_true(e.t - t0 < (limits.sigterm or 1), ("SIGTERM handover took %.3f s"):format(e.t - t0))
        assert.is_true(H.wait_until(function() return not H.alive(cluster:proc(leader)) end, 3))
        -- it gave its session up on the way out
        if sessions then assert.equal(sessions - 1, limits.sessions()) end
        -- and comes back as a candidate
        if round < rounds then cluster:add(leader .. "." .. round) end
        leader = successor
      end
      io.stderr:write(("\n[%s] SIGTERM handover (ttl %g s): %s ms\n"):format(
        backend, limits.ttl, table.concat(handovers, ", ")))
      -- one election a handover, each with a higher term
      local all = cluster:all_elections()
      assert.equal(rounds + 1, #all, cluster:dump())
      for i = 2, #all do assert.is_true(all[i].term > all[i - 1].term, cluster:dump()) end
      if limits.counted then
        for i, e in ipairs(all) do assert.equal(i, e.term) end
      end
      assert.is_nil(cluster:violation())
    end)

    it("hands over after kill -9 within the limit", function()
      local first, e1 = start("kill9")
      os.execute("sleep 0.5")
      local t0 = time()
      H.signal(cluster:proc(first), "KILL")
      local second, e = cluster:wait_leader(limits.kill9 + 3, first)
      assert.truthy(second, cluster:dump())
      local handover = e.t - t0
      io.stderr:write(("\n[%s] kill -9 handover (ttl %g s): %.0f ms\n"):format(backend, limits.ttl, handover * 1000))
      assert.is_true(handover <= limits.kill9, ("kill -9 handover took %.3f s"):format(handover))
      if limits.kill9_min then
        assert.is_true(handover >= limits.kill9_min, ("kill -9 handover took only %.3f s"):format(handover))
      end
      assert.is_true(e.term > e1.term)
      if limits.counted then assert.equal(2, e.term) end
      assert.is_nil(cluster:violation())
    end)

    it("a leader paused past its ttl never runs leader code again; terms rise", function()
      local first, e1 = start("pause")
      os.execute("sleep 0.5")
      local proc = cluster:proc(first)
      H.signal(proc, "STOP")
      local second, e = cluster:wait_leader(limits.takeover or limits.pause + 5, first)
      os.execute(("sleep %g"):format(math.max(0, limits.pause - 1)))
      H.signal(proc, "CONT")
      os.execute("sleep 1")
      assert.truthy(second, cluster:dump())
      assert.is_nil(cluster:violation())
      -- the resumed one stepped down before doing any work
      local lost
      for _, line in ipairs(cluster:lines(first)) do
        if line:match("^lost") then lost = line end
      end
      assert.truthy(lost, cluster:dump())
      io.stderr:write(("\n[%s] paused leader on resume: %s\n"):format(backend, lost))
      if limits.lost then
        local reason = lost:match("^lost (%S+)")
        local allowed = false
        for _, r in ipairs(limits.lost) do allowed = allowed or r == reason end
        assert.is_true(allowed, lost)
      end
      -- nothing it did after the new leader was elected; both did work
      local old, new = 0, 0
      for _, s in ipairs(cluster:read_stamps()) do
        if s.node == first then
          old = old + 1
          assert.is_true(s.t < e.t, ("%s stamped at %.3f, %s elected at %.3f"):format(first, s.t, second, e.t))
        elseif s.node == second then
          new = new + 1
        end
      end
      assert.is_true(old > 10 and new > 10, old .. " / " .. new)
      assert.is_true(e.term > e1.term)
      if limits.counted then assert.equal(2, e.term) end
      -- and it did not come back as a leader
      assert.same({ second }, cluster:leaders(), cluster:dump())
    end)
  end)
end

return C
