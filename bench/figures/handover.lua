-- Figures 1 and 2: a chain of candidates on one key. Each round starts
-- the next candidate, lets it queue behind the leader, then stops the
-- leader (SIGTERM: graceful handoff; SIGKILL: crash failover) and times
-- the signal's send time to the next candidate's "elected" line.
local P = require "proc"

local M = {}

-- Samples (seconds) of one side on one store; failed rounds are counted.
-- opts: sig, runs, ttl, settle, jitter (extra random wait before the
-- signal, so a kill lands anywhere in the renewal cycle).
function M.chain(ctx, side, store, opts)
  local key = ctx.key(opts.tag)
  local samples, failed = {}, 0
  local function spawn(i)
    local name = ("%s-%s-%s-%d"):format(opts.tag, store.name, side.name, i)
    return P.spawn(side.candidate(store.url, key, name, opts.ttl), ctx.dir, name, side.env)
  end
  local leader = spawn(0)
  if not P.wait_line(leader, "elected", nil, 20) then
    ctx.note(("%s %s %s: the first candidate was never elected (see %s)"):format(opts.tag, store.name, side.label, leader.stdout))
    P.stop(leader)
    return samples, opts.runs
  end
  for i = 1, opts.runs do
    local next = spawn(i)
    P.wait_line(next, "start", nil, 10)
    P.sleep(opts.settle + (opts.jitter or 0) * math.random())
    local t0 = P.killer(leader, opts.sig).fire()
    local won = P.wait_line(next, "elected", nil, opts.ttl * 4 + 5, t0)
    if won then samples[#samples + 1] = won.t - t0 else failed = failed + 1 end
    P.stop(leader, 3)
    leader = next
    if not won and not P.wait_line(leader, "elected", nil, opts.ttl * 4) then break end
  end
  P.stop(leader, 5)
  if failed > 0 then
    ctx.note(("%s %s %s: %d of %d rounds saw no election within %gs"):format(opts.tag, store.name, side.label,
      failed, opts.runs, opts.ttl * 4 + 5))
  end
  return samples, failed
end

return M
