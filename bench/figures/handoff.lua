-- Figure 1, graceful handoff: the leader gets SIGTERM; time to the next
-- candidate's on_elected. Sides run one after the other (milliseconds
-- are measured: nothing else runs meanwhile).
local handover = require "figures.handover"
local stats = require "stats"

return function(ctx)
  for _, store in ipairs(ctx.servers) do
    local result = {}
    for _, side in ipairs(ctx.sides) do
      result[side.name] = handover.chain(ctx, side, store, {
        tag = "handoff", sig = "TERM", runs = ctx.settings.runs, ttl = ctx.settings.ttl, settle = ctx.settings.settle,
      })
    end
    local function ms(f, side) local v = f(result[side]) return v and v * 1000 end
    ctx.report.add { figure = "1 graceful handoff", store = store.name, metric = ("median of %d"):format(ctx.settings.runs),
      unit = "ms", ours = ms(stats.median, "ours"), peer = ms(stats.median, "peer"), target = { ratio = 0.5 } }
    ctx.report.add { figure = "1 graceful handoff", store = store.name, metric = "max", unit = "ms",
      ours = ms(stats.max, "ours"), peer = ms(stats.max, "peer") }
  end
end
