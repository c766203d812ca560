-- Figure 3, follower fan-out: N follower processes on one key; the leader
-- hands off (SIGTERM) to a queued candidate; per follower, the time from
-- the new leader's "elected" line to its own "leader <new>" line. Several
-- handoffs per setting; p50 and max over every follower notification.
local P = require "proc"
local stats = require "stats"

local M = {}

local function run(ctx, side, store, n)
  local key, dir = ctx.key("fanout"), ctx.dir
  local tag = ("fanout%d-%s-%s"):format(n, store.name, side.name)
  local function candidate(i)
    local name = ("%s-c%d"):format(tag, i)
    return P.spawn(side.candidate(store.url, key, name, ctx.settings.ttl), dir, name, side.env)
  end
  local leader = candidate(0)
  local followers = {}
  local latencies, missed = {}, 0
  local function stop_all()
    for _, f in ipairs(followers) do P.signal(f, "KILL") end
    P.stop(leader, 3)
  end
  if not P.wait_line(leader, "elected", nil, 20) then
    ctx.note(tag .. ": the first candidate was never elected")
    stop_all()
    return latencies
  end
  -- docker/libkv's ZooKeeper watch needs the key to exist: followers
  -- start once it has a leader, for both sides alike.
  for i = 1, n do
    followers[i] = P.spawn(side.follower(store.url, key), dir, ("%s-f%d"):format(tag, i), side.env)
  end
  local everyone = function(name, after)
    return P.wait(function()
      for _, f in ipairs(followers) do
        if not P.find(f, "leader", name, after) then return false end
      end
      return true
    end, 30)
  end
  if not everyone(leader.name) then
    ctx.note(tag .. ": not every follower saw the first leader within 30 s")
  end
  for round = 1, ctx.settings.fanout_rounds do
    local next = candidate(round)
    P.wait_line(next, "start", nil, 10)
    P.sleep(ctx.settings.settle)
    local t_signal = P.killer(leader, "TERM").fire()
    local won = P.wait_line(next, "elected", nil, 20, t_signal)
    if won then
      everyone(next.name, t_signal)
      for _, f in ipairs(followers) do
        local seen = P.find(f, "leader", next.name, t_signal)
        if seen then latencies[#latencies + 1] = seen.t - won.t else missed = missed + 1 end
      end
    end
    P.stop(leader, 3)
    leader = next
    if not won then break end
  end
  stop_all()
  if missed > 0 then ctx.note(("%s: %d follower notifications never came (within 30 s)"):format(tag, missed)) end
  return latencies
end

function M.run(ctx)
  for _, store in ipairs(ctx.servers) do
    for _, n in ipairs(ctx.settings.fanout) do
      local result = {}
      for _, side in ipairs(ctx.sides) do result[side.name] = run(ctx, side, store, n) end
      local function ms(f, side, ...) local v = f(result[side], ...) return v and v * 1000 end
      local figure = ("3 fan-out, %d followers"):format(n)
      ctx.report.add { figure = figure, store = store.name, metric = "p50 elected→notified", unit = "ms",
        ours = ms(stats.quantile, "ours", 0.5), peer = ms(stats.quantile, "peer", 0.5) }
      ctx.report.add { figure = figure, store = store.name, metric = "max elected→notified", unit = "ms",
        ours = ms(stats.max, "ours"), peer = ms(stats.max, "peer"), target = { ratio = 0.5 } }
    end
  end
end

return M.run
