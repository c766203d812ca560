-- Policy files: a Lua file returning a table of settings and handlers.
-- read() loads and validates one; a Policy runs it (store, election,
-- handlers with a ctx) and reloads it without touching the election.
local util = require "leadership.util"
local backoff = require "leadership.backoff"

local M = {}

local FIELDS = {
  "store", "key", "node", "ttl", "renew_deadline", "mode", "value", "retry",
  "on_elected", "on_lost", "on_leader_change", "on_error", "on_reload",
}
local HANDLERS = { "on_elected", "on_lost", "on_leader_change", "on_error", "on_reload" }
-- Fields that shape the election itself: a reload reports, never applies them.
local RESTART_FIELDS = { "store", "key", "node", "ttl", "renew_deadline", "mode", "value" }

local function leadership() return require "leadership" end

local function hostname()
  local f = io.open("/proc/sys/kernel/hostname") or io.open("/etc/hostname")
  local name = f and f:read("l")
  if f then f:close() end
  return name or "localhost"
end

local function is_callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__call ~= nil
end

-- Checks and normalises the fields; returns spec or nil, message.
local function validate(spec, path)
  local function bad(fmt, ...) return nil, ("policy '%s': " .. fmt):format(path, ...) end
  for name in pairs(spec) do
    if not util.member(FIELDS, name) then return bad("%s", util.unknown("field", name, FIELDS)) end
  end
  local store = spec.store
  if type(store) == "table" then
    local options = {}
    for k, v in pairs(store) do if k ~= "url" then options[k] = v end end
    if type(store.url) ~= "string" then return bad("store.url must be a URL string") end
    spec.store, spec.store_options = store.url, options
  elseif type(store) ~= "string" then
    return bad("store must be a URL string (e.g. \"file:///var/lib/leadership\") or { url = ... }, got %s", type(store))
  end
  if type(spec.key) ~= "string" or spec.key == "" then return bad("key must be a non-empty string") end
  spec.node = spec.node or hostname()
  if type(spec.node) ~= "string" or spec.node == "" then return bad("node must be a non-empty string") end
  if spec.node:find("[\n\r%z]") then return bad("node must not contain a newline or NUL") end
  local ttl = spec.ttl or 15
  if type(ttl) == "string" then ttl = tonumber(ttl) or ttl end
  if type(ttl) ~= "number" or ttl ~= ttl then return bad("ttl must be a number of seconds, got '%s'", tostring(spec.ttl)) end
  if ttl <= 0 or ttl == math.huge then return bad("ttl must be > 0 seconds, got %s", tostring(ttl)) end
  spec.ttl = ttl
  if spec.renew_deadline ~= nil and type(spec.renew_deadline) ~= "number" then
    return bad("renew_deadline must be a number of seconds")
  end
  spec.mode = spec.mode or "candidate"
  if spec.mode ~= "candidate" and spec.mode ~= "follower" then
    return bad("mode must be \"candidate\" or \"follower\", got '%s'", tostring(spec.mode))
  end
  spec.value = spec.value or spec.node
  if type(spec.value) ~= "string" and type(spec.value) ~= "table" then
    return bad("value must be a string or a table")
  end
  if type(spec.retry) == "table" and not is_callable(spec.retry) then
    local ok, b = pcall(backoff.new, spec.retry)
    if not ok then return bad("bad retry: %s", tostring(b):gsub("^.-:%d+: ", "")) end
    spec.retry = b
  elseif spec.retry ~= nil and not is_callable(spec.retry) then
    return bad("retry must be a table { initial, max, factor, jitter } or a function")
  end
  spec.retry = spec.retry or backoff.new()
  for _, name in ipairs(HANDLERS) do
    if spec[name] ~= nil and not is_callable(spec[name]) then
      return bad("%s must be a function, got %s", name, type(spec[name]))
    end
  end
  return spec
end

-- Loads the file in a fresh environment. Returns the validated spec, or
-- nil and a message with the file (and line, for syntax errors).
function M.read(path, overrides)
  local file, err = io.open(path, "r")
  if not file then return nil, ("cannot read policy '%s': %s"):format(path, err:gsub("^[^:]*: ", "")) end
  local source = file:read("a")
  file:close()
  local env = setmetatable({}, { __index = _G })
  local chunk, syntax = load(source, "@" .. path, "t", env)
  if not chunk then return nil, "policy " .. syntax end
  local ok, result = xpcall(chunk, debug.traceback)
  if not ok then return nil, ("policy '%s' raised: %s"):format(path, tostring(result)) end
  if type(result) ~= "table" then
    return nil, ("policy '%s' must return a table, got %s"):format(path, type(result))
  end
  local spec = {}
  for k, v in pairs(result) do spec[k] = v end
  for k, v in pairs(overrides or {}) do spec[k] = v end
  return validate(spec, path)
end

local Policy = {}
Policy.__index = Policy

-- leadership.policy(path [, overrides]): a validated policy, not running.
function M.load(path, overrides)
  local spec, err = M.read(path, overrides)
  if not spec then error(err, 2) end
  return setmetatable({ path = path, overrides = overrides or {}, spec = spec }, Policy)
end

function Policy:log(level, ...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  leadership().log(level, table.concat(parts, " "))
end

-- The ctx handed to handlers: facts of this election and a few verbs.
function Policy:ctx(term, reloaded)
  local election, spec = self.election, self.spec
  return {
    term = term, node = spec.node, key = spec.key, mode = spec.mode, reloaded = reloaded or false,
    sleep = leadership().sleep,
    time = leadership().time,
    now = leadership().now,
    resign = function() if election.resign then election:resign() end end,
    is_leader = function() return election.is_leader ~= nil and election:is_leader() end,
    leader = function() return election:leader() end,
    log = function(...) self:log("info", spec.node .. ":", ...) end,
  }
end

-- Calls the current spec's handler `name`; a missing one does nothing.
function Policy:call(name, ctx, ...)
  local handler = self.spec[name]
  if handler then return handler(ctx, ...) end
end

-- Opens the store and runs the election with this policy's handlers.
function Policy:start()
  local L, spec = leadership(), self.spec
  local store, err = L.store(spec.store, spec.store_options)
  if not store then error(err, 0) end
  self.store = store
  local election
  if spec.mode == "candidate" then
    election = L.candidate(store, spec.key, spec.value, { ttl = spec.ttl, renew_deadline = spec.renew_deadline })
    election.on_elected = function(_, term) return self:call("on_elected", self:ctx(term)) end
    election.on_lost = function(_, reason) return self:call("on_lost", self:ctx(), reason) end
  else
    election = L.follower(store, spec.key, { ttl = spec.ttl })
  end
  election.on_leader_change = function(_, leader, term)
    return self:call("on_leader_change", self:ctx(), leader, term)
  end
  election.on_error = function(_, message) return self:call("on_error", self:ctx(), message) end
  -- looked up at each failure, so a reload changes it too
  election.retry = function(attempt, message) return self.spec.retry(attempt, message) end
  self.election = election
  election:run()
  return self
end

local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

-- Runs the file again; on success swaps the handlers without touching the
-- election. Returns true, or nil and the message (old handlers stay).
function Policy:reload()
  local spec, err = M.read(self.path, self.overrides)
  if not spec then
    self:log("error", "reload failed, keeping the running policy:", err)
    if self.election then self:call("on_error", self:ctx(), err) end
    return nil, err
  end
  local restart = {}
  for _, name in ipairs(RESTART_FIELDS) do
    local new = name == "store" and { spec.store, spec.store_options } or spec[name]
    local old = name == "store" and { self.spec.store, self.spec.store_options } or self.spec[name]
    if not same(new, old) then
      restart[#restart + 1] = name
      spec[name] = self.spec[name]
      if name == "store" then spec.store_options = self.spec.store_options end
    end
  end
  if #restart > 0 then
    self:log("warn", ("policy '%s': %s changed: needs restart (not applied)"):format(
      self.path, table.concat(restart, ", ")))
  end
  local election = self.election
  if election then election:cancel_handlers() end
  self.spec = spec
  self:log("info", ("policy '%s' reloaded"):format(self.path))
  if election and election.is_leader and election:is_leader() then
    local ctx = self:ctx(election:term(), true)
    local name = spec.on_reload and "on_reload" or "on_elected"
    election:spawn_leader(function() return self:call(name, ctx) end)
  end
  return true, restart
end

function Policy:stop()
  if self.election then self.election:stop() end
end

return M
