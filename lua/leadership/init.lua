-- The module `leadership`: the C core (leadership.core) plus what is
-- easier said in Lua: JSON leader values, backoff, policies.
local core = require "leadership.core"
local cjson = require "cjson"

local M = {}
for name, fn in pairs(core) do M[name] = fn end

M.version = "0.1.0"

-- A table value is stored as JSON so followers can read, e.g., the
-- leader's address. Values are UTF-8 text on every store.
local function encode_value(value, level)
  if type(value) == "table" then
    local ok, json = pcall(cjson.encode, value)
    if not ok then error("candidate value: cannot encode as JSON: " .. json, level + 1) end
    return json
  end
  if type(value) ~= "string" then
    error(("bad argument #3 to 'candidate' (string or table expected, got %s)"):format(type(value)), level + 1)
  end
  if not utf8.len(value) then error("bad argument #3 to 'candidate' (value is not UTF-8 text)", level + 1) end
  return value
end

function M.candidate(store, key, value, options)
  return core.candidate(store, key, encode_value(value, 2), options)
end

-- Values that look like JSON objects or arrays come back as tables.
core.set_value_decoder(function(value)
  if value:match("^%s*[{%[]") then
    local ok, decoded = pcall(cjson.decode, value)
    if ok and type(decoded) == "table" then return decoded end
  end
  return value
end)

M.backoff = require "leadership.backoff"
M.policy = function(path, overrides) return require("leadership.policy").load(path, overrides) end

return M
