-- Three candidates and a follower in one process on memory://, with the
-- module from a plain lua5.4:
--   LUA_PATH='build/lua/?.lua;build/lua/?/init.lua;;' LUA_CPATH='build/lua/?.so;;' \
--     lua5.4 examples/in-process.lua
local leadership = require "leadership"

local store = assert(leadership.store("memory://example"))
local key = "service/swarm/leader"

local follower = leadership.follower(store, key)
follower.on_leader_change = function(_, leader, term)
  print(("follower: leader is %s (term %s)"):format(leader and leader.name or "nobody", term))
end
assert(follower:run())

local candidates = {}
for _, name in ipairs { "underwood", "dunbar", "sharp" } do
  -- a table value reaches followers as a table: where to send requests
  local c = leadership.candidate(store, key, { name = name, addr = "127.0.0.1:80" }, { ttl = 2 })
  c.on_elected = function(self, term)
    print(name .. ": elected, term " .. term)
    leadership.sleep(0.5) -- leader work
    self:resign()
  end
  c.on_lost = function(_, reason) print(name .. ": lost (" .. reason .. ")") end
  assert(c:run())
  candidates[#candidates + 1] = c
end

leadership.sleep(2) -- run the loop for two seconds: leaders take turns
for _, c in ipairs(candidates) do c:stop() end
follower:stop()
leadership.run()
