-- `leadership exec`: a command that runs only while this process leads.
--
-- The command (leadership.command, runtime/exec.c) runs in a process group
-- of its own, guarded by a watchdog process told the local deadline after
-- every renewal. On any loss the whole group gets SIGTERM, then SIGKILL
-- after the grace -- but never later than half-way from the local deadline
-- to the lease's expiry in the store, so a command that ignores SIGTERM is
-- gone before the next leader can be elected. SIGTERM/SIGINT to us go to
-- the command the same way; leadership is released once it is gone. When
-- the command ends by itself, leadership is released and its exit status
-- becomes ours.
local M = {}

-- Exit status when the command cannot be run (as a shell says).
local CANNOT_RUN = 127
-- Exit status when the watchdog is lost and the command is stopped.
local INTERNAL = 70

-- opts: store (URL), store_options, key, node, ttl, grace, argv, metrics
-- (a leadership.metrics server, or nil; closed at the end). Returns the
-- exit status, or nil and a message if nothing could be started.
function M.run(opts)
  local L = require "leadership"
  local grace, ttl = opts.grace, opts.ttl
  -- the local deadline is 2/3 of the ttl after a renewal was sent: half
  -- of the remaining third is the latest safe SIGKILL
  local kill_margin = math.min(grace, ttl / 6)
  -- file:// frees a dead holder's key at once, so a command left behind by
  -- a crashed leadership gets no grace there
  local scheme = tostring(opts.store):match("^(%w+)://")
  local eof_grace = scheme == "file" and 0 or grace

  -- the watchdog is forked before any store exists (no threads, no sockets)
  local cmd, err = L.command(opts.argv, { grace = grace, eof_grace = eof_grace })
  if not cmd then return nil, err end
  local ok, store, store_err = pcall(L.store, opts.store, opts.store_options)
  if not ok or not store then
    cmd:close()
    return nil, (tostring(ok and store_err or store):gsub("^.-:%d+: ", ""))
  end
  local made, c = pcall(L.candidate, store, opts.key, opts.node, { ttl = ttl })
  if not made then
    cmd:close()
    store:close()
    return nil, (tostring(c):gsub("^.-:%d+: ", ""))
  end
  if opts.metrics then opts.metrics:add(c, opts.node) end

  local status, stopping
  local kill_by -- the latest SIGKILL for the current lease (monotonic)

  local function start(term)
    local deadline = c:deadline()
    if stopping or not deadline or cmd:running() then return end -- on_exit starts it
    kill_by = deadline + kill_margin
    local env = { LEADERSHIP_TERM = tostring(term), LEADERSHIP_KEY = opts.key, LEADERSHIP_NODE = opts.node }
    local pid, start_err = cmd:start(env, deadline, kill_by)
    if not pid then
      L.log("error", start_err)
      status = CANNOT_RUN
      stopping = true
      c:stop()
    end
  end

  local function terminate()
    local kill_at = L.now() + grace
    if kill_by and kill_by < kill_at and not c:is_leader() then kill_at = kill_by end
    cmd:terminate(kill_at)
  end

  c.on_elected = function(_, term) start(term) end
  c.on_renewed = function(_, deadline)
    kill_by = deadline + kill_margin
    cmd:guard(deadline, kill_by)
  end
  c.on_lost = function() if cmd:running() then terminate() end end
  c.on_error = function() end -- the engine logs store errors; retry is the default backoff

  cmd.on_exit = function(_, code, cause)
    if stopping then
      c:stop()
    elseif cause == nil then
      -- it ended by itself: so do we, with its status
      status, stopping = code, true
      c:stop()
    elseif c:is_leader() then
      if cause == "watchdog" then
        -- a renewal crossed the watchdog's deadline: end this term cleanly
        c:resign()
      else
        start(c:term()) -- lost and won again while it was ending
      end
    end
  end
  cmd.on_error = function(_, message)
    L.log("error", message .. ": stopping")
    status, stopping = INTERNAL, true
    if cmd:running() then terminate() else c:stop() end
  end

  local function stop()
    if stopping then return end
    stopping = true
    -- still leading while the command winds down: no one else runs yet
    if cmd:running() then cmd:terminate(L.now() + grace) else c:stop() end
  end
  L.on_signal("TERM", stop)
  L.on_signal("INT", stop)
  -- SIGHUP's default would end us at once, our command unguarded and the
  -- key not released; a unit's ExecReload sends it
  L.on_signal("HUP", function() L.log("info", "SIGHUP: exec has nothing to reload; ignored") end)
  c:run()
  L.run()
  L.on_signal("TERM", nil)
  L.on_signal("INT", nil)
  L.on_signal("HUP", nil)
  cmd:close()
  c:close()
  -- the election goes with the collector (the metrics server holds it
  -- too); then the store can close and finish its release before we exit
  if opts.metrics then opts.metrics:close() end
  c = nil
  collectgarbage()
  collectgarbage()
  store:close()
  L.run(10)
  return status or 0
end

return M
