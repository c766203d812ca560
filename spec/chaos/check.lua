-- The history checker of the chaos run:
--
--   lua5.4 spec/chaos/check.lua DIR      (exit 0: no violation; 1: any)
--
-- DIR holds one directory per backend configuration, as spec/chaos/driver.lua
-- leaves it: faults.log, the work stamps ("<wall> <node> <term> <deadline>"
-- from spec/support/stamp_policy.lua with STAMP_DEADLINE), and each node
-- incarnation's output ("elected T <wall>", "lost REASON <wall>", "late ...")
-- and stderr. For each configuration it reports the faults by kind and:
--
--   overlaps     leadership intervals (first to last stamp of a term) that
--                overlap another's, or a term stamped by two nodes  (must be 0)
--   terms        a leadership that began with a term not above the previous
--                one's                                              (must be 0)
--   past dl      the longest a stamp came after its node's own local
--                deadline (stamps past it are violations)           (must be 0)
--   outside      stamps outside every span of their node's "elected T" ..
--                "lost" lines for that term (a node whose lease outlived
--                a local step-down may lead again with the same term; no
--                other node can have led in between)              (must be 0)
--   crashes      nodes that died without being killed, sanitizer reports
--                in any node's stderr                               (must be 0)
--   stuck        no leader within the driver's bound after a heal, the
--                store never healthy again, or the driver failed    (must be 0)
--   no leader    the worst time from a fault's heal to the next stamp
--   max gap      the longest time between two stamps: the longest the
--                service went without a leader's work, faults included
--   late         resumes of leader code that found the deadline passed
--                (printed, not counted: the policy then does no work)
--
-- The last line is "faults N violations M".
local M = {}

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function lines(text)
  return (text or ""):gmatch("[^\n]+")
end

local function list_dir(dir, pattern)
  local names = {}
  local p = io.popen("ls -1 '" .. dir:gsub("'", "'\\''") .. "' 2>/dev/null")
  for name in p:lines() do
    if not pattern or name:match(pattern) then names[#names + 1] = name end
  end
  p:close()
  table.sort(names)
  return names
end

local SANITIZER = { "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "==ERROR:" }

-- Reads one configuration's directory; returns its result table.
function M.backend(dir)
  local r = {
    faults = 0, by_kind = {}, terms = 0, stamps = 0, overlaps = 0, terms_not_rising = 0,
    past_deadline = 0, past_deadline_max = 0, outside = 0, crashes = 0, stuck = 0, late = 0,
    worst_no_leader = 0, worst_kind = "-", max_gap = 0, same_term = 0, examples = {}, notes = {},
  }
  local function example(fmt, ...)
    if #r.examples < 5 then r.examples[#r.examples + 1] = fmt:format(...) end
  end

  -- the faults
  local faults, ended = {}, nil
  for line in lines(read(dir .. "/faults.log")) do
    local kind, target, start, heal = line:match("^fault (%S+) (%S+) ([%d.]+) ([%d.]+)")
    if kind then
      faults[#faults + 1] = { kind = kind, target = target, start = tonumber(start), heal = tonumber(heal) }
      r.by_kind[kind] = (r.by_kind[kind] or 0) + 1
    elseif line:match("^crash ") then
      r.crashes = r.crashes + 1
      example("%s", line)
    elseif line:match("^stuck ") or line:match("^error ") then
      r.stuck = r.stuck + 1
      example("%s", line)
    elseif line:match("^skip ") then
      r.notes[#r.notes + 1] = line
    end
    ended = tonumber(line:match("^end ([%d.]+)")) or ended
  end
  r.faults = #faults
  r.ended = ended ~= nil

  -- the leadership spans of every node incarnation: "node term" -> list
  -- of { from, to } (to: its "lost" line, or never for a node killed)
  local spans = {}
  for _, file in ipairs(list_dir(dir, "^node%-.*%.out$")) do
    local node = file:match("^(node%-%d+)")
    local open
    for line in lines(read(dir .. "/" .. file)) do
      local term, at = line:match("^elected (%d+) ([%d.]+)")
      if term then
        local key = node .. " " .. term
        spans[key] = spans[key] or {}
        open = { from = tonumber(at), to = math.huge }
        table.insert(spans[key], open)
      end
      at = line:match("^lost %S+ ([%d.]+)")
      if at and open then
        open.to = tonumber(at)
        open = nil
      end
      if line:match("^late ") then r.late = r.late + 1 end
    end
  end
  for _, list in pairs(spans) do
    if #list > 1 then r.same_term = r.same_term + #list - 1 end
  end
  local function inside(s)
    for _, span in ipairs(spans[s.node .. " " .. s.term] or {}) do
      if s.t >= span.from and s.t <= span.to then return true end
    end
    return false
  end
  for _, file in ipairs(list_dir(dir, "^node%-.*%.err$")) do
    local text = read(dir .. "/" .. file) or ""
    for _, needle in ipairs(SANITIZER) do
      if text:find(needle, 1, true) then
        r.crashes = r.crashes + 1
        example("%s: %s", file, needle)
        break
      end
    end
  end

  -- the stamps: intervals per term
  local stamps, intervals, by_term = {}, {}, {}
  for line in lines(read(dir .. "/stamps")) do
    local t, node, term, deadline = line:match("^([%d.]+) (%S+) (%d+) ?([%d.]*)$")
    if t then
      local s = { t = tonumber(t), node = node, term = tonumber(term), deadline = tonumber(deadline) }
      stamps[#stamps + 1] = s
      local iv = by_term[s.term]
      if not iv then
        iv = { term = s.term, node = s.node, first = s.t, last = s.t }
        by_term[s.term] = iv
        intervals[#intervals + 1] = iv
      elseif iv.node ~= s.node and not iv.shared then
        iv.shared = true
        r.overlaps = r.overlaps + 1
        example("term %d stamped by both %s and %s", s.term, iv.node, s.node)
      end
      iv.first, iv.last = math.min(iv.first, s.t), math.max(iv.last, s.t)
      if s.deadline and s.t > s.deadline then
        r.past_deadline = r.past_deadline + 1
        example("%s term %d stamped at %.6f, %.3f s past its deadline", s.node, s.term, s.t, s.t - s.deadline)
      end
      if s.deadline then r.past_deadline_max = math.max(r.past_deadline_max, s.t - s.deadline) end
      if not inside(s) then
        r.outside = r.outside + 1
        example("%s term %d stamped at %.6f, outside its elected..lost spans", s.node, s.term, s.t)
      end
    end
  end
  r.stamps, r.terms = #stamps, #intervals
  table.sort(intervals, function(a, b) return a.first < b.first end)
  local reach -- the interval reaching furthest so far
  for i, cur in ipairs(intervals) do
    if reach and cur.first <= reach.last then
      r.overlaps = r.overlaps + 1
      example("overlap: %s term %d worked until %.6f, %s term %d began at %.6f", reach.node, reach.term,
        reach.last, cur.node, cur.term, cur.first)
    end
    local prev = intervals[i - 1]
    if prev and cur.term <= prev.term then
      r.terms_not_rising = r.terms_not_rising + 1
      example("term %d (%s) began after term %d (%s)", cur.term, cur.node, prev.term, prev.node)
    end
    if not reach or cur.last > reach.last then reach = cur end
  end

  -- time without a leader after each heal: to the first stamp at or after it
  table.sort(stamps, function(a, b) return a.t < b.t end)
  local function first_stamp_after(t)
    local lo, hi = 1, #stamps
    if hi == 0 or stamps[hi].t < t then return nil end
    while lo < hi do
      local mid = (lo + hi) // 2
      if stamps[mid].t < t then lo = mid + 1 else hi = mid end
    end
    return stamps[lo].t
  end
  for i = 2, #stamps do
    r.max_gap = math.max(r.max_gap, stamps[i].t - stamps[i - 1].t)
  end
  for _, f in ipairs(faults) do
    local next_t = first_stamp_after(f.heal)
    local gap = next_t and next_t - f.heal
    if gap and gap > r.worst_no_leader then r.worst_no_leader, r.worst_kind = gap, f.kind end
  end
  r.violations = r.overlaps + r.terms_not_rising + r.past_deadline + r.outside + r.crashes + r.stuck
  if not r.ended then
    r.violations = r.violations + 1
    example("the driver did not finish (no 'end' in faults.log)")
  end
  if r.stamps == 0 then
    r.violations = r.violations + 1
    example("no stamps at all: nobody ever led")
  end
  return r
end

local KINDS = { "kill_leader", "kill_follower", "pause_leader", "pause_follower", "store_restart", "store_pause",
                "member_kill", "partition_leader", "partition_follower" }

-- Checks every configuration under dir; prints the tables; returns the
-- total number of faults and of violations.
function M.run(dir, out)
  out = out or io.stdout
  local names = {}
  for _, n in ipairs(list_dir(dir)) do
    if read(dir .. "/" .. n .. "/faults.log") then names[#names + 1] = n end
  end
  local results, faults, violations = {}, 0, 0
  for _, n in ipairs(names) do
    local r = M.backend(dir .. "/" .. n)
    results[n] = r
    faults, violations = faults + r.faults, violations + r.violations
  end
  local function row(cells, widths)
    local parts = {}
    for i, c in ipairs(cells) do parts[i] = ("%" .. widths[i] .. "s"):format(c) end
    out:write(table.concat(parts, " "), "\n")
  end
  local w = { -8, 6, 6, 8, 7, 7, 6, 7, 5, 4, 8, 10, 10 }
  row({ "backend", "faults", "terms", "overlaps", "terms", "past", "out-", "crashes", "stuck", "late", "max",
        "no leader", "violations" }, w)
  row({ "", "", "", "", "<= prev", "dl (s)", "side", "", "", "", "gap (s)", "after heal", "" }, w)
  for _, n in ipairs(names) do
    local r = results[n]
    row({ n, r.faults, r.terms, r.overlaps, r.terms_not_rising,
          r.past_deadline > 0 and ("%.3f"):format(r.past_deadline_max) or "0",
          r.outside, r.crashes, r.stuck, r.late, ("%.2f"):format(r.max_gap),
          ("%.2f s"):format(r.worst_no_leader), r.violations }, w)
  end
  out:write("\nfaults by kind\n")
  local kw = { -18 }
  local header = { "kind" }
  for i, n in ipairs(names) do header[i + 1], kw[i + 1] = n, 7 end
  row(header, kw)
  for _, k in ipairs(KINDS) do
    local cells, any = { k }, false
    for i, n in ipairs(names) do
      local c = results[n].by_kind[k]
      cells[i + 1] = c or "-"
      any = any or c ~= nil
    end
    if any then row(cells, kw) end
  end
  local worst = {}
  for _, n in ipairs(names) do
    worst[#worst + 1] = ("%s %.2f s (%s)"):format(n, results[n].worst_no_leader, results[n].worst_kind)
  end
  out:write("\nworst time without a leader after a heal: ", table.concat(worst, ", "), "\n")
  local again = {}
  for _, n in ipairs(names) do
    if results[n].same_term > 0 then again[#again + 1] = ("%s %d"):format(n, results[n].same_term) end
  end
  if #again > 0 then
    out:write("led again with the same term after a local step-down (the lease outlived it): ",
      table.concat(again, ", "), "\n")
  end
  for _, n in ipairs(names) do
    local r = results[n]
    for _, note in ipairs(r.notes) do out:write(n, ": ", note, "\n") end
    for _, e in ipairs(r.examples) do out:write(n, ": VIOLATION ", e, "\n") end
  end
  out:write(("faults %d violations %d\n"):format(faults, violations))
  return faults, violations, results
end

if arg and arg[0] and arg[0]:match("check%.lua$") then
  assert(arg[1], "usage: lua5.4 spec/chaos/check.lua DIR")
  local _, violations = M.run(arg[1])
  os.exit(violations == 0 and 0 or 1)
end

return M
