-- The policy the multi-process specs run. It prints one line per event
-- on stdout and, while leader, appends "<wall time> <node> <term>" to
-- $STAMP_FILE every 10 ms: the work stamps the specs check for overlap.
--
-- With STAMP_DEADLINE set (the chaos run) each stamp is real leader work
-- done the safe way: the time is taken first, then leadership is checked
-- (ctx.is_leader(), false past the local deadline), and only then is the
-- stamp written, with the wall-clock local deadline as a fourth field. A
-- check after the time was taken can never let a stamp carry a time at
-- which this node was past its deadline, even if the process is stopped
-- between the two; a resume that finds leadership gone prints "late".
local leadership = require "leadership"
local stamp_file = os.getenv("STAMP_FILE")
local with_deadline = os.getenv("STAMP_DEADLINE") ~= nil

local function say(...)
  io.stdout:write(table.concat({ ... }, " "), "\n")
  io.stdout:flush()
end

return {
  store = os.getenv("STORE") or "file:///tmp/leadership-stamp",
  key = os.getenv("KEY") or "spec/leader",
  ttl = tonumber(os.getenv("TTL") or "2"),
  retry = { initial = 0.1, max = 1, factor = 2, jitter = 0.2 },
  on_elected = function(ctx)
    say("elected", ctx.term, ("%.6f"):format(leadership.time()))
    while true do
      if stamp_file and with_deadline then
        local t, now, deadline = leadership.time(), leadership.now(), ctx.deadline()
        if ctx.is_leader() and deadline then
          local f = assert(io.open(stamp_file, "a"))
          f:write(("%.6f %s %d %.6f\n"):format(t, ctx.node, ctx.term, t + (deadline - now)))
          f:close()
        else
          say("late", ctx.term, ("%.6f"):format(t), ("%.6f"):format(leadership.time()))
        end
      elseif stamp_file then
        local f = assert(io.open(stamp_file, "a"))
        f:write(("%.6f %s %d\n"):format(leadership.time(), ctx.node, ctx.term))
        f:close()
      end
      ctx.sleep(0.01)
    end
  end,
  on_lost = function(_, reason) say("lost", reason, ("%.6f"):format(leadership.time())) end,
  on_leader_change = function(_, leader, term) say("leader", tostring(leader), tostring(term)) end,
  on_error = function(_, err) say("error", (tostring(err):gsub("\n", " "))) end,
}
