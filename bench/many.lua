-- N elections in one process through `require "leadership"`, one store
-- object for all of them (what DESIGN.md promises: one session or lease
-- per store). Run from the repository root with the build on the paths:
--   lua5.4 bench/many.lua URL PREFIX N TTL
-- It says "all-elected N" once every key prefix/key-<i> is held, a
-- progress line each second until then (and nothing after), and on
-- SIGTERM a last progress line, then stops every election (releasing
-- the lease at once).
local L = require "leadership"
local say = require "bench.policies.say"

say("start")
local url, prefix, n, ttl = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])
assert(url and prefix and n and ttl, "usage: lua5.4 bench/many.lua URL PREFIX N TTL")

local store = assert(L.store(url))
local elected, leaders, errors, lost = 0, 0, 0, 0
local stopping = false
local candidates = {}
for i = 1, n do
  local c = L.candidate(store, prefix .. "/key-" .. i, "ours", { ttl = ttl })
  local won, held = false, false
  c.on_elected = function()
    held, leaders = true, leaders + 1
    if not won then
      won = true
      elected = elected + 1
      if elected == n then say("all-elected", n) end
    end
  end
  -- on_lost can come without on_elected having run (a loss before the
  -- handler's coroutine started cancels it)
  c.on_lost = function()
    if held then held, leaders = false, leaders - 1 end
    if not stopping then lost = lost + 1 end
  end
  c.on_error = function() errors = errors + 1 end
  candidates[i] = c
  assert(c:run())
end

local function progress()
  say("progress", ("elected=%d leaders=%d errors=%d lost=%d"):format(elected, leaders, errors, lost))
end
-- Stops in slices with a yield between them: a handler that runs past
-- its budget without yielding is aborted (10,000 stops in one go are, and
-- 500 on the file store, whose stops write to disk, once were).
local STOP_SLICE = 100
L.on_signal("TERM", function()
  progress()
  stopping = true
  local t0 = L.now()
  for i, c in ipairs(candidates) do
    c:stop()
    if i % STOP_SLICE == 0 then L.sleep(0) end
  end
  say("stopping", ("%d elections stopped in %.3f s"):format(#candidates, L.now() - t0))
end)
while elected < n and not stopping do
  L.sleep(1)
  progress()
end
L.run()
L.on_signal("TERM", nil)
store:close()
say("stopped")
