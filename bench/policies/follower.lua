-- A follower that prints each leader it is told of ("-" when vacant).
local say = require "bench.policies.say"

say("start")
return {
  store = "etcd://127.0.0.1:2379",
  key = "bench/leader",
  mode = "follower",
  on_leader_change = function(_, leader, term)
    say("leader", leader == nil and "-" or tostring(leader), term)
  end,
  on_error = function(_, err) say("error", err) end,
}
