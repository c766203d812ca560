-- Figure 2, crash failover: the leader gets SIGKILL; time to the next
-- candidate's on_elected, bounded by the ttl. The four chains (two sides,
-- two stores) run at once: each round waits out a ttl, and what is timed
-- is the store's expiry, not CPU.
local P = require "proc"
local handover = require "figures.handover"
local stats = require "stats"

return function(ctx)
  local ttl = ctx.settings.ttl
  local result, jobs = {}, {}
  for _, store in ipairs(ctx.servers) do
    result[store.name] = {}
    for _, side in ipairs(ctx.sides) do
      jobs[#jobs + 1] = function()
        result[store.name][side.name] = handover.chain(ctx, side, store, {
          tag = "crash", sig = "KILL", runs = ctx.settings.runs, ttl = ttl, settle = ctx.settings.settle,
          jitter = ttl / 3,
        })
      end
    end
  end
  P.parallel(jobs)
  for _, store in ipairs(ctx.servers) do
    local r = result[store.name]
    local function ms(f, side) local v = r[side] and f(r[side]) return v and v * 1000 end
    ctx.report.add { figure = "2 crash failover, ttl " .. ttl .. " s", store = store.name,
      metric = ("median of %d"):format(ctx.settings.runs), unit = "ms",
      ours = ms(stats.median, "ours"), peer = ms(stats.median, "peer") }
    ctx.report.add { figure = "2 crash failover, ttl " .. ttl .. " s", store = store.name, metric = "max", unit = "ms",
      ours = ms(stats.max, "ours"), peer = ms(stats.max, "peer"), target = { ours = ttl * 1000 } }
  end
end
