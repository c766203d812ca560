-- Edit this file while it runs: the leader's work switches to the new code
-- within about 0.1 s of the save, under the same term, with no election.
--   build/leadership run examples/reload-demo.lua --node a
--   build/leadership run examples/reload-demo.lua --node b   (another terminal)
-- Walkthrough: "Hot reload" in README.md.
local leadership = require "leadership"

local GREETING = "hello" -- change me, save, and watch the leader's output
local EVERY = 1          -- seconds between two beats of work

local function say(ctx, ...)
  local t = leadership.time()
  local stamp = os.date("%H:%M:%S", math.floor(t)) .. (".%03d"):format(math.floor(t % 1 * 1000))
  io.stdout:write(stamp, " ", ctx.node, " ", table.concat({ ... }, " "), "\n")
  io.stdout:flush()
end

return {
  store = "file:///tmp/leadership-reload-demo",
  key = "demo/reload",
  ttl = 3,
  on_elected = function(ctx)
    -- closed when this code stops running: on a loss, and when a reload
    -- replaces it (the same way, so clean-up lives in one place)
    local work <close> = setmetatable({}, {
      __close = function() say(ctx, "work of", GREETING, "stops") end,
    })
    if ctx.reloaded then
      say(ctx, "reloaded while leader, still term", ctx.term)
    else
      say(ctx, "elected, term", ctx.term)
    end
    while true do
      say(ctx, GREETING, "from the leader, term", ctx.term)
      ctx.sleep(EVERY)
    end
  end,
  on_lost = function(ctx, reason) say(ctx, "lost leadership:", reason) end,
  -- a reload that fails is reported here (by the policy still running)
  on_error = function(ctx, err) say(ctx, "error:", err) end,
}
