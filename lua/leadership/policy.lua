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

-- "policy <path>:<line>: " where the line is known, else "policy <path>: ".
local function where(path, line)
  return line and ("policy %s:%d: "):format(path, line) or ("policy %s: "):format(path)
end

-- The line that assigns `field` in the source, found by its text: the
-- returned table carries no positions. nil when it cannot be told (the
-- field built by code, or given on the command line).
local function field_line(source, field)
  if not source then return nil end
  -- an unknown field may be any string: match it literally
  field = tostring(field):gsub("%p", "%%%0")
  local line = 0
  for text in (source .. "\n"):gmatch("([^\n]*)\n") do
    line = line + 1
    local code = text:gsub("%-%-.*$", "")
    if code:find("%f[%w_.]" .. field .. "%s*=[^=]") or code:find("%f[%w_.]" .. field .. "%s*=$") then
      return line
    end
  end
end

-- Checks and normalises the fields; returns spec or nil, message. `source`
-- (the file's text) lets a message name the line of the bad field;
-- fields in `given` came from elsewhere (flags) and have no line.
local function validate(spec, path, source, given)
  local function bad(field, fmt, ...)
    local line = not (given and given[field]) and field_line(source, field) or nil
    return nil, where(path, line) .. fmt:format(...)
  end
  for name in pairs(spec) do
    if not util.member(FIELDS, name) then
      return bad(tostring(name), "%s", util.unknown("field", name, FIELDS))
    end
  end
  local store = spec.store
  if type(store) == "table" then
    local options = {}
    for k, v in pairs(store) do if k ~= "url" then options[k] = v end end
    if type(store.url) ~= "string" then return bad("store", "store.url must be a URL string") end
    spec.store, spec.store_options = store.url, options
  elseif type(store) ~= "string" then
    return bad("store", "store must be a URL string (e.g. \"file:///var/lib/leadership\") or { url = ... }, got %s", type(store))
  end
  if type(spec.key) ~= "string" or spec.key == "" then return bad("key", "key must be a non-empty string") end
  spec.node = spec.node or hostname()
  if type(spec.node) ~= "string" or spec.node == "" then return bad("node", "node must be a non-empty string") end
  if spec.node:find("[\n\r%z]") then return bad("node", "node must not contain a newline or NUL") end
  local ttl = spec.ttl or 15
  if type(ttl) == "string" then ttl = tonumber(ttl) or ttl end
  if type(ttl) ~= "number" or ttl ~= ttl then return bad("ttl", "ttl must be a number of seconds, got '%s'", tostring(spec.ttl)) end
  if ttl <= 0 or ttl == math.huge then return bad("ttl", "ttl must be > 0 seconds, got %s", tostring(ttl)) end
  spec.ttl = ttl
  if spec.renew_deadline ~= nil and type(spec.renew_deadline) ~= "number" then
    return bad("renew_deadline", "renew_deadline must be a number of seconds")
  end
  spec.mode = spec.mode or "candidate"
  if spec.mode ~= "candidate" and spec.mode ~= "follower" then
    return bad("mode", "mode must be \"candidate\" or \"follower\", got '%s'", tostring(spec.mode))
  end
  spec.value = spec.value or spec.node
  if type(spec.value) ~= "string" and type(spec.value) ~= "table" then
    return bad("value", "value must be a string or a table")
  end
  if type(spec.retry) == "table" and not is_callable(spec.retry) then
    local ok, b = pcall(backoff.new, spec.retry)
    if not ok then return bad("retry", "bad retry: %s", tostring(b):gsub("^.-:%d+: ", "")) end
    spec.retry = b
  elseif spec.retry ~= nil and not is_callable(spec.retry) then
    return bad("retry", "retry must be a table { initial, max, factor, jitter } or a function")
  end
  spec.retry = spec.retry or backoff.new()
  for _, name in ipairs(HANDLERS) do
    if spec[name] ~= nil and not is_callable(spec[name]) then
      return bad(name, "%s must be a function, got %s", name, type(spec[name]))
    end
  end
  return spec
end

-- The line of the last `return` at the start of a line: where a chunk
-- that returns the wrong thing most likely does it; else the last line.
local function return_line(source)
  local line, last = 0, nil
  for text in (source .. "\n"):gmatch("([^\n]*)\n") do
    line = line + 1
    if text:find("^%s*return%f[^%w_]") then last = line end
  end
  return last or line
end

local function read_source(path)
  local file, err = io.open(path, "r")
  if not file then return nil, ("cannot read policy '%s': %s"):format(path, err:gsub("^[^:]*: ", "")) end
  local source = file:read("a")
  file:close()
  return source
end

-- Runs the policy's text in a fresh environment. Returns the validated
-- spec, or nil, a one-line message "policy <file>:<line>: ..." (the line
-- where it can be told) and, for a runtime error, the traceback.
local function evaluate(path, source, overrides)
  local env = setmetatable({}, { __index = _G })
  local chunk, syntax = load(source, "@" .. path, "t", env)
  if not chunk then
    -- Lua shortens a long chunk name ("...cy/dir/x.lua"); give the path whole
    local line, message = syntax:match(":(%d+): (.*)$")
    return nil, line and ("policy %s:%s: %s"):format(path, line, message) or "policy " .. syntax
  end
  local traceback
  local ok, result = xpcall(chunk, function(e)
    traceback = debug.traceback(nil, 2)
    local message = tostring(e)
    if type(e) ~= "string" then message = "(error object is a " .. type(e) .. " value: " .. message .. ")" end
    -- placed at the file's innermost line on the stack, with the whole
    -- path (Lua shortens long ones), also when a library it called raised
    for level = 2, 200 do
      local info = debug.getinfo(level, "Sl")
      if not info then break end
      if info.source == "@" .. path and info.currentline > 0 then
        local own = ("%s:%d: "):format(info.short_src, info.currentline)
        if message:sub(1, #own) == own then message = message:sub(#own + 1) end
        return ("%s:%d: %s"):format(path, info.currentline, message)
      end
    end
    return message
  end)
  if not ok then return nil, "policy " .. result, traceback end
  if type(result) ~= "table" then
    return nil, ("%smust return a table, got %s"):format(where(path, return_line(source)), type(result))
  end
  local spec, given = {}, {}
  for k, v in pairs(result) do spec[k] = v end
  for k, v in pairs(overrides or {}) do spec[k], given[k] = v, true end
  return validate(spec, path, source, given)
end

-- Loads the file: the validated spec, or nil, message [, traceback].
function M.read(path, overrides)
  local source, err = read_source(path)
  if not source then return nil, err end
  return evaluate(path, source, overrides)
end

local Policy = {}
Policy.__index = Policy

-- leadership.policy(path [, overrides]): a validated policy, not running.
function M.load(path, overrides)
  local source, err = read_source(path)
  local spec
  if source then spec, err = evaluate(path, source, overrides) end
  if not spec then error(err, 2) end
  return setmetatable({ path = path, overrides = overrides or {}, spec = spec, source = source }, Policy)
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
    -- the local deadline (monotonic, as ctx.now()) while leader, else nil
    deadline = function() return election.deadline and election:deadline() end,
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

-- Reports a failed reload to the running policy's on_error, in the
-- reloading coroutine (the watch's or SIGHUP's handler task), so the report
-- is made before reload() returns. A failing on_error is only logged: it
-- must not turn one error into two reports.
function Policy:report(message)
  if not (self.election and self.spec.on_error) then return end
  local ok, err = xpcall(self.call, debug.traceback, self, "on_error", self:ctx(), message)
  if not ok then self:log("error", "on_error raised while reporting a failed reload:", err) end
end

-- Runs the file again; on success swaps the handlers without touching the
-- election. Returns true and the list of fields that need a restart, or
-- nil and the message (the old handlers and their coroutines stay).
-- With opts.if_changed (the file watch), a file whose text is the running
-- one is left alone: saving without a change, or touch, restarts nothing.
function Policy:reload(opts)
  local source, err = read_source(self.path)
  if source and opts and opts.if_changed and source == self.source then
    self:log("debug", ("policy %s unchanged: not reloaded"):format(self.path))
    return true, {}
  end
  local spec, traceback
  if source then spec, err, traceback = evaluate(self.path, source, self.overrides) end
  if not spec then
    self:log("error", "reload failed, keeping the running policy:", traceback and (err .. "\n" .. traceback) or err)
    self:report(err)
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
    self:log("warn", ("policy %s: %s changed: needs restart (not applied; the rest is reloaded)"):format(
      self.path, table.concat(restart, ", ")))
  end
  local election = self.election
  -- the old coroutines end (to-be-closed variables closed) before any new
  -- code runs, so old and new work never interleave
  if election then election:cancel_handlers() end
  self.spec, self.source = spec, source
  self:log("info", ("policy %s reloaded"):format(self.path))
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

-- Stops, then gives the store back so its backend can end the session
-- (revoke the lease) while the caller still runs the loop.
function Policy:close()
  local election, store = self.election, self.store
  self.election, self.store = nil, nil
  if election then election:close() end
  election = nil
  -- the election holds the store until collected
  collectgarbage()
  collectgarbage()
  if store then store:close() end
end

return M
