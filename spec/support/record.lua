-- What the in-process specs share: handler calls recorded as lines of
-- text ("a elected 7", "b sees a 7", "a lost resign"), looked up by
-- pattern; the loop run until something holds; fresh keys; and the check
-- after each spec that nothing is left alive.
local L = require "leadership"
local assert = require "luassert" -- busted's own, outside a spec's environment

local R = {}

-- Every election made through R.candidate, R.follower or R.track, weakly:
-- one a spec dropped is still the garbage collector's to close.
local tracked = setmetatable({}, { __mode = "k" })

-- Returns election, tracked, so that R.nothing_alive can stop it if the
-- spec that made it fails before it does.
function R.track(election)
  tracked[election] = true
  return election
end

-- Returns log, record: record(...) appends its arguments, each through
-- tostring and joined by spaces, to the list log.
function R.recorder()
  local log = {}
  return log, function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    log[#log + 1] = table.concat(parts, " ")
  end
end

-- The first line matching pattern at or after index `from`: index, line.
function R.find(log, pattern, from)
  for i = from or 1, #log do
    if log[i]:match(pattern) then return i, log[i] end
  end
end

function R.count(log, pattern)
  local n = 0
  for _, line in ipairs(log) do if line:match(pattern) then n = n + 1 end end
  return n
end

-- A candidate for `name` whose handler calls go to record as
-- "<name> elected|lost|sees|error ...".
function R.candidate(store, key, name, record, options)
  local c = R.track(L.candidate(store, key, name, options))
  c.on_elected = function(_, term) record(name, "elected", term) end
  c.on_lost = function(_, reason) record(name, "lost", reason) end
  c.on_leader_change = function(_, leader, term) record(name, "sees", leader, term) end
  c.on_error = function(_, err) record(name, "error", err) end
  return c
end

-- A follower recorded the same way, as `name`.
function R.follower(store, key, name, record)
  local f = R.track(L.follower(store, key))
  f.on_leader_change = function(_, leader, term) record(name, "sees", leader, term) end
  f.on_error = function(_, err) record(name, "error", err) end
  return f
end

-- Runs the loop until fn() is truthy or `timeout` seconds pass, looking
-- every `step` seconds (default 0.01); returns what fn() last returned.
function R.loop_until(fn, timeout, step)
  local deadline = L.now() + timeout
  while not fn() and L.now() < deadline do L.sleep(step or 0.01) end
  return fn()
end

-- Returns new_key(): a key under spec/<backend>/ no earlier run (of this
-- or another spec process) has used.
function R.keys(backend)
  local n = 0
  return function()
    n = n + 1
    return ("spec/%s/%d-%d/%d"):format(backend, os.time(), math.random(1e6), n)
  end
end

-- Returns new_store(): a memory:// store of its own, "<name>-<n>".
function R.memory_stores(name)
  local n = 0
  return function()
    n = n + 1
    return assert(L.store(("memory://%s-%d"):format(name, n)))
  end
end

-- After a spec: runs the loop for `settle` seconds (default 2), collects
-- garbage, runs it `after` seconds more when given, and expects no
-- election, store, task or hold alive. A tracked election still running
-- fails this check too, after it is stopped: a spec that failed half-way
-- then fails once, instead of leaving its elections to fail the leak check
-- of every spec after it.
function R.nothing_alive(settle, after)
  L.run(settle or 2)
  collectgarbage()
  collectgarbage()
  local running, left_running = {}, {}
  for election in pairs(tracked) do
    local state = election:state()
    if state ~= "idle" and state ~= "stopped" then
      running[#running + 1] = election
      left_running[#left_running + 1] = tostring(election)
    end
  end
  -- named before any is stopped: stopping a leader elects the next one
  for _, election in ipairs(running) do election:stop() end
  running = nil -- now the collector may free them
  tracked = setmetatable({}, { __mode = "k" })
  if #left_running > 0 then
    L.run(settle or 2)
    collectgarbage()
  end
  if after then L.run(after) end
  assert.same({ elections = 0, stores = 0, tasks = 0, holds = 0 }, L.live())
  assert(#left_running == 0, "the spec left elections running: " .. table.concat(left_running, ", "))
end

-- Everything a spec opens (stores, elections), so its after_each can stop
-- and close it even when the test failed halfway (and the leak check then
-- tests the backend, not the test): keep(object) returns object;
-- close_kept() stops and closes all, newest first.
function R.keeper()
  local opened = {}
  local function keep(object)
    opened[#opened + 1] = object
    return object
  end
  local function close_kept()
    for i = #opened, 1, -1 do
      local object = opened[i]
      if object.stop then pcall(object.stop, object) end
      pcall(object.close, object)
      opened[i] = nil
    end
  end
  return keep, close_kept
end

return R
