-- The bench's line format, shared with bench/peers/docker-leadership:
-- "<wall time> <event> <words...>", flushed at once so the runner reads
-- each event as it happens. Used by the policies and bench/many.lua.
local leadership = require "leadership"

return function(...)
  local words = { ("%.6f"):format(leadership.time()), ... }
  for i = 2, #words do words[i] = (tostring(words[i]):gsub("\n", " ")) end
  io.stdout:write(table.concat(words, " "), "\n")
  io.stdout:flush()
end
