-- The seed's first program: run for election; when elected, do leader
-- work for a while, then resign and run again.
--   build/leadership run examples/candidate.lua --node underwood
local leadership = require "leadership"

return {
  store = "file:///tmp/leadership-example",
  key = "service/swarm/leader",
  ttl = 15,
  on_elected = function(ctx)
    ctx.log("I won the election! I'm now the leader, term", ctx.term)
    ctx.sleep(10) -- leader stuff
    ctx.log("tired of being a leader: resigning")
    ctx.resign()
  end,
  on_lost = function(ctx, reason)
    ctx.log("lost the election (" .. reason .. "), let's try another time")
  end,
  on_leader_change = function(ctx, leader, term)
    if leader == nil then ctx.log("no leader right now") end
  end,
}
