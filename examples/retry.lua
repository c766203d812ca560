-- The seed's fault-tolerant program: store failures reach on_error, and
-- instead of a hand-written "sleep 10 s and run again" loop the runtime
-- retries with exponential backoff and jitter. `attempts = N` makes it
-- retry N times and give up (a final on_error) at failure N + 1 in a row.
--   build/leadership run examples/retry.lua --store etcd://127.0.0.1:2379
return {
  store = "file:///tmp/leadership-example",
  key = "service/swarm/leader",
  ttl = 15,
  retry = { initial = 0.5, max = 10, factor = 2, jitter = 0.2 },
  on_elected = function(ctx)
    ctx.log("elected, term", ctx.term)
    while true do ctx.sleep(1) end -- do something
  end,
  on_lost = function(ctx, reason) ctx.log("not leader any more:", reason) end,
  on_error = function(ctx, err)
    ctx.log("store trouble, the runtime retries with backoff:", err)
  end,
}
