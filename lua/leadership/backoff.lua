-- leadership.backoff{ initial, max, factor, jitter, attempts }: a callable
-- retry(attempt, err) -> seconds, or nil once `attempts` are used up.
local util = require "leadership.util"

local defaults = { initial = 0.5, max = 30, factor = 2, jitter = 0.2 }
local fields = { "initial", "max", "factor", "jitter", "attempts" }

local Backoff = {}
Backoff.__index = Backoff

function Backoff:__call(attempt, _err)
  if self.attempts and attempt > self.attempts then return nil end
  local delay = math.min(self.max, self.initial * self.factor ^ (attempt - 1))
  return delay * (1 + self.jitter * (2 * math.random() - 1))
end

-- Returns the backoff, or raises naming the bad field. Used by policies too.
local function new(options, level)
  level = (level or 1) + 1
  options = options or {}
  if type(options) ~= "table" then
    error(("backoff wants a table, got %s"):format(type(options)), level)
  end
  local b = setmetatable({}, Backoff)
  for name, value in pairs(options) do
    if not util.member(fields, name) then
      error(util.unknown("backoff field", name, fields), level)
    end
    if type(value) ~= "number" or value ~= value then
      error(("backoff field '%s' must be a number, got %s"):format(name, type(value)), level)
    end
  end
  for name, default in pairs(defaults) do b[name] = options[name] or default end
  b.attempts = options.attempts
  if b.initial <= 0 then error("backoff 'initial' must be > 0", level) end
  if b.max < b.initial then error("backoff 'max' must be >= 'initial'", level) end
  if b.factor < 1 then error("backoff 'factor' must be >= 1", level) end
  if b.jitter < 0 or b.jitter >= 1 then error("backoff 'jitter' must be in [0, 1)", level) end
  if b.attempts and (b.attempts < 1 or b.attempts % 1 ~= 0) then
    error("backoff 'attempts' must be a whole number >= 1", level)
  end
  return b
end

return setmetatable({ new = new }, { __call = function(_, options) return new(options, 2) end })
