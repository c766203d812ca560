-- Small helpers shared by the Lua half.
local M = {}

function M.member(list, value)
  for _, v in ipairs(list) do if v == value then return true end end
  return false
end

local function distance(a, b)
  local row = {}
  for j = 0, #b do row[j] = j end
  for i = 1, #a do
    local diag, up = row[0], nil
    row[0] = i
    for j = 1, #b do
      up = row[j]
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      row[j] = math.min(row[j] + 1, row[j - 1] + 1, diag + cost)
      diag = up
    end
  end
  return row[#b]
end

-- The closest of `words` to `word`, or nil when none is close.
function M.closest(word, words)
  local best, best_distance = nil, #word // 3 + 2
  for _, w in ipairs(words) do
    local d = distance(word, w)
    if d < best_distance then best, best_distance = w, d end
  end
  return best
end

-- "unknown <what> 'x' (did you mean 'y'?)"
function M.unknown(what, name, known)
  local hint = type(name) == "string" and M.closest(name, known)
  return ("unknown %s '%s'%s"):format(what, tostring(name), hint and (" (did you mean '" .. hint .. "'?)") or "")
end

-- This host's name (the default node name).
function M.hostname()
  local f = io.open("/proc/sys/kernel/hostname") or io.open("/etc/hostname")
  local name = f and f:read("l")
  if f then f:close() end
  return name or "localhost"
end

return M
