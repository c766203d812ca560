-- The policy the multi-process specs run. It prints one line per event
-- on stdout and, while leader, appends "<wall time> <node> <term>" to
-- $STAMP_FILE every 10 ms: the work stamps the specs check for overlap.
local leadership = require "leadership"
local stamp_file = os.getenv("STAMP_FILE")

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
      if stamp_file then
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
