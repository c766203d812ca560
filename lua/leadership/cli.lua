-- The `leadership` command line. main(args) returns the exit status.
local util = require "leadership.util"

local M = {}

local USAGE = [[
usage: leadership run POLICY.lua [--store URL] [--key K] [--node N] [--ttl S]
                                 [--metrics ADDR:PORT]
       leadership exec --store URL --key K [--node N] [--ttl S] [--grace S]
                       [--metrics ADDR:PORT] [--] CMD [ARGS...]
       leadership leader --store URL --key K [--timeout S]
       leadership watch --store URL --key K [--json]
       leadership --help | --version
  every command also takes --log-format text|json and
  --log-level debug|info|warn|error (logs go to stderr, one line per event)

  run     run a policy: campaign (or follow) and call its handlers;
          SIGHUP reloads the policy, SIGTERM/SIGINT release leadership and exit
  exec    run CMD (in a process group of its own, with LEADERSHIP_TERM,
          LEADERSHIP_KEY and LEADERSHIP_NODE set) only while leader: on loss
          it gets SIGTERM, then SIGKILL after --grace (default 5 s; less when
          the lease could expire sooner); a watchdog process kills it if this
          one is paused or dies. SIGTERM/SIGINT go to CMD, then leadership
          is released. Exits with CMD's status when CMD ends by itself.
  leader  print the current leader "NODE TERM" (exit 0), or "vacant" (exit 1);
          exit 3 if the store does not answer within --timeout (default 5 s)
  watch   print a line per leader change (time, leader or "vacant", term;
          --json: one JSON object per line) until SIGINT/SIGTERM
  --metrics ADDR:PORT  serve /metrics (Prometheus text) and /healthz
]]

-- Exit status for bad input (usage, policy, URL, option).
local BAD_INPUT = 2
-- `leader`: there is no leader; the store did not answer in time.
local VACANT, UNAVAILABLE = 1, 3

local function fail(message)
  io.stderr:write("leadership: ", message, "\n")
  return BAD_INPUT
end

-- Parses "--flag value" pairs into a table; positional words in order.
-- `flags` maps flag names to field names; a name in `switches` takes no
-- value (true when given). With `command`, the first positional word
-- starts the command: it and everything after it are words.
local function parse(args, first, flags, switches, command)
  switches = switches or {}
  local options, words = {}, {}
  local i = first
  while i <= #args do
    local a = args[i]
    local name, inline = a:match("^%-%-([%w-]+)=(.*)$")
    name = name or a:match("^%-%-([%w-]+)$")
    if a == "--" then
      for j = i + 1, #args do words[#words + 1] = args[j] end
      break
    elseif name then
      if not flags[name] and not switches[name] then
        local known = {}
        for k in pairs(flags) do known[#known + 1] = k end
        for k in pairs(switches) do known[#known + 1] = k end
        table.sort(known)
        return nil, util.unknown("flag", "--" .. name, (function()
          local t = {}
          for _, k in ipairs(known) do t[#t + 1] = "--" .. k end
          return t
        end)())
      end
      local value = inline
      if switches[name] then
        if inline then return nil, ("flag --%s takes no value"):format(name) end
        value = true
      elseif not value then
        i = i + 1
        value = args[i]
        if value == nil then return nil, ("flag --%s needs a value"):format(name) end
      end
      options[flags[name] or name] = value
    elseif command then
      for j = i, #args do words[#words + 1] = args[j] end
      break
    else
      words[#words + 1] = a
    end
    i = i + 1
  end
  return options, words
end

local function configure_logs(options, default_level)
  local L = require "leadership"
  local ok, err = pcall(L.log_config, { format = options.log_format, level = options.log_level or default_level or "info" })
  if not ok then return nil, (tostring(err):gsub("^.-:%d+: ", "")) end
  return true
end

-- The flags every command takes, plus `extra`.
local function with_common(extra)
  local flags = { ["log-format"] = "log_format", ["log-level"] = "log_level" }
  for k, v in pairs(extra) do flags[k] = v end
  return flags
end

local RUN_FLAGS = with_common { store = "store", key = "key", node = "node", ttl = "ttl", metrics = "metrics" }

-- A bound metrics server for --metrics, or nil and the message.
local function open_metrics(address)
  local ok, server, err = pcall(require("leadership").metrics, address)
  if not ok then return nil, (tostring(server):gsub("^.-:%d+: ", "")) end
  return server, err
end

function M.run(args)
  local options, words = parse(args, 2, RUN_FLAGS)
  if not options then return fail(words) end
  if #words ~= 1 then return fail("run needs exactly one POLICY.lua (see --help)") end
  local ok, err = configure_logs(options)
  if not ok then return fail(err) end
  local overrides = { store = options.store, key = options.key, node = options.node, ttl = options.ttl }
  local policy_module = require "leadership.policy"
  local loaded, policy = pcall(policy_module.load, words[1], overrides)
  if not loaded then return fail((tostring(policy):gsub("^.-:%d+: ", "", 0))) end
  local metrics, metrics_err
  if options.metrics then
    metrics, metrics_err = open_metrics(options.metrics)
    if not metrics then return fail(metrics_err) end
  end
  local started, start_err = pcall(policy.start, policy)
  if not started then return fail((tostring(start_err):gsub("^[^\n]-%.lua:%d+: ", ""))) end
  if metrics then metrics:add(policy.election, policy.spec.node) end
  local L = require "leadership"
  local function stop() policy:stop() end
  L.on_signal("TERM", stop)
  L.on_signal("INT", stop)
  L.on_signal("HUP", function() policy:reload() end)
  local watching, watch_err = L.watch_file(words[1], function() policy:reload{ if_changed = true } end)
  if not watching then L.log("warn", watch_err .. ": reload with SIGHUP") end
  L.run()
  L.on_signal("TERM", nil)
  L.on_signal("INT", nil)
  L.on_signal("HUP", nil)
  L.watch_file(words[1], nil)
  if metrics then metrics:close() end
  policy:close()
  L.run(10) -- the backend's last requests (a lease revoke), bounded
  return 0
end

-- Seconds from a flag: a number >= 0 (> 0 if positive) and below `below`
-- if given, or nil and a message.
local function seconds(options, field, flag, default, positive, below)
  local text = options[field]
  if text == nil then return default end
  local value = tonumber(text)
  if not value or value ~= value or value < 0 or value == math.huge or (positive and value == 0)
      or (below and value >= below) then
    return nil, ("--%s wants seconds%s%s, got '%s'"):format(flag, positive and " > 0" or "",
      below and (" below %d"):format(below) or "", text)
  end
  return value
end

-- A day: the longest grace leadership.command takes, and the longest wait.
local DAY = 86400

-- Checks the flags a command cannot do without.
local function require_flags(options, command, names)
  for _, name in ipairs(names) do
    if not options[name] then return nil, ("%s needs --%s (see --help)"):format(command, name) end
  end
  return true
end

local EXEC_FLAGS = with_common {
  store = "store", key = "key", node = "node", ttl = "ttl", grace = "grace", metrics = "metrics",
}

function M.exec(args)
  local options, words = parse(args, 2, EXEC_FLAGS, nil, true)
  if not options then return fail(words) end
  if #words == 0 then return fail("exec needs a command: leadership exec --store URL --key K -- CMD [ARGS...]") end
  local ok, err = require_flags(options, "exec", { "store", "key" })
  if not ok then return fail(err) end
  ok, err = configure_logs(options)
  if not ok then return fail(err) end
  local ttl, ttl_err = seconds(options, "ttl", "ttl", 15, true)
  if not ttl then return fail(ttl_err) end
  local grace, grace_err = seconds(options, "grace", "grace", 5, false, DAY)
  if not grace then return fail(grace_err) end
  local node = options.node or util.hostname()
  if node == "" or node:find("[\n\r%z]") then return fail("--node must be a non-empty line of text") end
  local metrics, metrics_err
  if options.metrics then
    metrics, metrics_err = open_metrics(options.metrics)
    if not metrics then return fail(metrics_err) end
  end
  local status, run_err = require("leadership.exec").run {
    store = options.store, key = options.key, node = node, ttl = ttl, grace = grace,
    argv = words, metrics = metrics,
  }
  if metrics then metrics:close() end
  if not status then return fail(run_err) end
  return status
end

-- Opens the store and a follower of options.key for leader and watch.
local function follow(options)
  local L = require "leadership"
  local ok, store, err = pcall(L.store, options.store)
  if not ok or not store then return nil, (tostring(ok and err or store):gsub("^.-:%d+: ", "")) end
  local made, f = pcall(L.follower, store, options.key)
  if not made then
    store:close()
    return nil, (tostring(f):gsub("^.-:%d+: ", ""))
  end
  return f, store
end

-- Closes a store whose elections are closed and no longer referenced,
-- and lets the backend finish (a release in flight) before we exit.
local function close_store(store)
  collectgarbage()
  collectgarbage()
  store:close()
  require("leadership").run(10)
end

-- A leader value as one word of text: a table value (JSON in the store) as JSON.
local function leader_text(leader)
  if type(leader) == "table" then return require("cjson").encode(leader) end
  return tostring(leader)
end

local LEADER_FLAGS = with_common { store = "store", key = "key", timeout = "timeout" }

function M.leader(args)
  local options, words = parse(args, 2, LEADER_FLAGS)
  if not options then return fail(words) end
  if #words > 0 then return fail(("leader takes no argument '%s' (see --help)"):format(words[1])) end
  local ok, err = require_flags(options, "leader", { "store", "key" })
  if not ok then return fail(err) end
  ok, err = configure_logs(options, "error")
  if not ok then return fail(err) end
  local timeout, timeout_err = seconds(options, "timeout", "timeout", 5, true, DAY)
  if not timeout then return fail(timeout_err) end
  local f, store = follow(options)
  if not f then return fail(store) end
  local L = require "leadership"
  local answer, last_error
  f.on_leader_change = function(self, leader, term)
    answer = { leader = leader, term = term }
    self:stop()
  end
  f.on_error = function(_, message) last_error = message end
  f:run()
  L.run(timeout)
  f:close()
  f = nil
  close_store(store)
  if not answer then
    io.stderr:write(("leadership: no answer from %s within %g s%s\n"):format(
      options.store, timeout, last_error and (": " .. last_error) or ""))
    return UNAVAILABLE
  end
  if answer.leader == nil then
    io.stdout:write("vacant\n")
    return VACANT
  end
  io.stdout:write(leader_text(answer.leader), " ", tostring(answer.term), "\n")
  return 0
end

-- ISO 8601 UTC with milliseconds, as the logs write it.
local function iso_time(t)
  local whole = math.floor(t)
  return os.date("!%Y-%m-%dT%H:%M:%S", whole) .. (".%03dZ"):format(math.floor((t - whole) * 1000))
end

local WATCH_FLAGS = with_common { store = "store", key = "key" }

function M.watch(args)
  local options, words = parse(args, 2, WATCH_FLAGS, { json = true })
  if not options then return fail(words) end
  if #words > 0 then return fail(("watch takes no argument '%s' (see --help)"):format(words[1])) end
  local ok, err = require_flags(options, "watch", { "store", "key" })
  if not ok then return fail(err) end
  ok, err = configure_logs(options, "warn")
  if not ok then return fail(err) end
  local f, store = follow(options)
  if not f then return fail(store) end
  local L = require "leadership"
  local cjson = require "cjson"
  f.on_leader_change = function(_, leader, term)
    local time = iso_time(L.time())
    local line
    if options.json then
      line = ('{"time":%s,"leader":%s,"term":%s}'):format(cjson.encode(time),
        leader == nil and "null" or cjson.encode(leader), term and tostring(term) or "null")
    elseif leader == nil then
      line = time .. " vacant"
    else
      line = ("%s %s %s"):format(time, leader_text(leader), tostring(term))
    end
    io.stdout:write(line, "\n")
    io.stdout:flush()
  end
  f.on_error = function() end -- logged by the engine; the follower retries
  local function stop() f:stop() end
  L.on_signal("TERM", stop)
  L.on_signal("INT", stop)
  f:run()
  L.run()
  L.on_signal("TERM", nil)
  L.on_signal("INT", nil)
  f:close()
  f = nil
  close_store(store)
  return 0
end

M.commands = { run = M.run, exec = M.exec, leader = M.leader, watch = M.watch }

function M.main(args)
  local command = args[1]
  if command == nil or command == "--help" or command == "-h" or command == "help" then
    io.stdout:write(USAGE)
    return command == nil and BAD_INPUT or 0
  end
  if command == "--version" then
    io.stdout:write("leadership ", require("leadership").version, "\n")
    return 0
  end
  local handler = M.commands[command]
  if not handler then
    local names = {}
    for name in pairs(M.commands) do names[#names + 1] = name end
    return fail(util.unknown("command", command, names) .. " (see --help)")
  end
  return handler(args)
end

return M
