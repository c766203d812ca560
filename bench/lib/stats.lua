-- Order statistics over a list of samples.
local M = {}

local function sorted(xs)
  local s = {}
  for i, x in ipairs(xs) do s[i] = x end
  table.sort(s)
  return s
end

-- The p-quantile (0..1), nearest rank; nil for no samples.
function M.quantile(xs, p)
  if #xs == 0 then return nil end
  local s = sorted(xs)
  return s[math.max(1, math.min(#s, math.ceil(p * #s)))]
end

function M.median(xs)
  if #xs == 0 then return nil end
  local s, n = sorted(xs), #xs
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

function M.max(xs)
  local m
  for _, x in ipairs(xs) do if m == nil or x > m then m = x end end
  return m
end

return M
