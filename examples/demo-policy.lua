-- The demo's policy: say when elected and lost, and work while leader.
-- Run by examples/demo.sh as three processes on one file:// store.
local leadership = require "leadership"

local function say(ctx, ...)
  local t = leadership.time()
  local stamp = os.date("%H:%M:%S", math.floor(t)) .. (".%03d"):format(math.floor(t % 1 * 1000))
  io.stdout:write(stamp, " ", ctx.node, " ", table.concat({ ... }, " "), "\n")
  io.stdout:flush()
end

return {
  store = "file:///tmp/leadership-demo",
  key = "demo/leader",
  ttl = 2,
  on_elected = function(ctx)
    say(ctx, "elected, term", ctx.term)
    while true do
      ctx.sleep(0.5) -- the leader's work goes here
    end
  end,
  on_lost = function(ctx, reason) say(ctx, "lost leadership:", reason) end,
  on_leader_change = function(ctx, leader, term)
    if leader and leader ~= ctx.node then say(ctx, "follows", leader, "term", term) end
  end,
}
