-- The `leadership` command line. main(args) returns the exit status.
local util = require "leadership.util"

local M = {}

local USAGE = [[
usage: leadership run POLICY.lua [--store URL] [--key K] [--node N] [--ttl S]
                                  [--log-format text|json] [--log-level LEVEL]
       leadership --help | --version

  run     run a policy: campaign (or follow) and call its handlers;
          SIGHUP reloads the policy, SIGTERM/SIGINT release leadership and exit
]]

-- Exit status for bad input (usage, policy, URL, option).
local BAD_INPUT = 2

local function fail(message)
  io.stderr:write("leadership: ", message, "\n")
  return BAD_INPUT
end

-- Parses "--flag value" pairs into a table; positional words in order.
-- `flags` maps flag names to field names.
local function parse(args, first, flags)
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
      if not flags[name] then
        local known = {}
        for k in pairs(flags) do known[#known + 1] = k end
        table.sort(known)
        return nil, util.unknown("flag", "--" .. name, (function()
          local t = {}
          for _, k in ipairs(known) do t[#t + 1] = "--" .. k end
          return t
        end)())
      end
      local value = inline
      if not value then
        i = i + 1
        value = args[i]
        if value == nil then return nil, ("flag --%s needs a value"):format(name) end
      end
      options[flags[name]] = value
    else
      words[#words + 1] = a
    end
    i = i + 1
  end
  return options, words
end

local function configure_logs(options)
  local L = require "leadership"
  local ok, err = pcall(L.log_config, { format = options.log_format, level = options.log_level or "info" })
  if not ok then return nil, (tostring(err):gsub("^.-:%d+: ", "")) end
  return true
end

local RUN_FLAGS = {
  store = "store", key = "key", node = "node", ttl = "ttl",
  ["log-format"] = "log_format", ["log-level"] = "log_level",
}

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
  local started, start_err = pcall(policy.start, policy)
  if not started then return fail((tostring(start_err):gsub("^[^\n]-%.lua:%d+: ", ""))) end
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
  return 0
end

M.commands = { run = M.run }

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
