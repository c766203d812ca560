-- A candidate that only reports: `leadership run bench/policies/candidate.lua
-- --store URL --key K --node N --ttl S`, run from the repository root.
-- Holding leadership it does nothing, so the idle figure measures the
-- runtime alone.
local say = require "bench.policies.say"

say("start")
return {
  store = "etcd://127.0.0.1:2379",
  key = "bench/leader",
  on_elected = function(ctx) say("elected", ctx.node, ctx.term) end,
  on_lost = function(ctx, reason) say("lost", ctx.node, reason) end,
  on_error = function(_, err) say("error", err) end,
}
