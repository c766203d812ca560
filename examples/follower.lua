-- The seed's second program: follow an election and print every new
-- leader, e.g. to always send requests to the current one.
--   build/leadership run examples/follower.lua
return {
  store = "file:///tmp/leadership-example",
  key = "service/swarm/leader",
  mode = "follower",
  on_leader_change = function(ctx, leader, term)
    if leader then
      ctx.log(("%s is now the leader (term %d)"):format(tostring(leader), term))
    else
      ctx.log("the leader is gone; waiting for the next one")
    end
  end,
}
