-- The Redis backend's edges, against a real redis-server on 127.0.0.1:
-- option limits, and what one process does with its own leases when the
-- server turns a request down.
local L = require "leadership"
local R = require "redis"
local Rec = require "record"

local have = H.have("redis-server", pending) and H.have("redis-cli", pending)

local new_key = Rec.keys("redis-review")
local recorder, find, loop_until = Rec.recorder, Rec.find, Rec.loop_until

describe("redis store edges", function()
  if not have then return end
  local srv
  local keep, close_kept = Rec.keeper()

  setup(function() srv = R.start() end)
  teardown(function() if srv then srv:stop() end end)

  after_each(function()
    close_kept()
    Rec.nothing_alive(3, 1)
  end)

  -- a store that cannot open is nil, message (bad options raise)
  local function open_error(url, options)
    local ok, store, err = pcall(L.store, url, options)
    if ok and store then keep(store) end
    assert.is_nil(ok and store or nil, "the store opened")
    return ok and err or store
  end

  it("refuses a poll_interval too long for a timer, naming it", function()
    -- math.huge wrapped to no wait at all: a follower of a vacant key
    -- read it some 40,000 times a second
    assert.matches("'poll_interval' must be between 10ms and 3600s %(got 'inf'%)",
                   open_error(srv.url, { poll_interval = math.huge }))
    assert.matches("'poll_interval' must be between", open_error(srv.url .. "?poll_interval=1e300"))
    assert.matches("'poll_interval' must be between", open_error(srv.url .. "?poll_interval=5ms"))
    -- the longest allowed waits: a vacant key is read once, then on news
    local s = keep(assert(L.store(srv.url, { poll_interval = 3600 })))
    local before = tonumber(srv:cli("INFO", "commandstats"):match("cmdstat_evalsha:calls=(%d+)") or "0")
    local log, record = recorder()
    local f = keep(Rec.follower(s, new_key(), "f", record))
    f:run()
    assert.truthy(loop_until(function() return find(log, "^f sees nil") end, 2), table.concat(log, "\n"))
    L.sleep(0.3)
    local after = tonumber(srv:cli("INFO", "commandstats"):match("cmdstat_evalsha:calls=(%d+)") or "0")
    assert.truthy(after - before <= 3, (after - before) .. " reads in 0.3 s")
    f:stop(); s:close()
  end)

  it("a resign whose release the server refused (BUSY) still hands over once it answers", function()
    local s1, s2 = keep(assert(L.store(srv.url))), keep(assert(L.store(srv.url)))
    local key = new_key()
    local log, record = recorder()
    local a = keep(Rec.candidate(s1, key, "a", record, { ttl = 5 }))
    local b = keep(Rec.candidate(s2, key, "b", record, { ttl = 5 }))
    a.retry = function() return 0.05 end
    b.retry = function() return 0.05 end
    a:run()
    assert.truthy(loop_until(function() return a:is_leader() end, 2))
    b:run()
    assert.truthy(loop_until(function() return find(log, "^b sees a 1$") end, 2))
    -- a script that runs 1 s: after 0.1 s every other command hears BUSY
    assert.equal("OK", srv:cli("CONFIG", "SET", "busy-reply-threshold", "100"))
    local slow = H.spawn({ "env", "-u", "LD_PRELOAD", "redis-cli", "-p", tostring(srv.port), "EVAL",
      "local t0 = tonumber(redis.call('TIME')[1]) * 1e6 + tonumber(redis.call('TIME')[2]) " ..
      "while true do local t = redis.call('TIME') " ..
      "if tonumber(t[1]) * 1e6 + tonumber(t[2]) - t0 > 1e6 then return 1 end end", "0" })
    finally(function() H.stop(slow) end)
    assert.truthy(H.wait_until(function() return srv:cli("PING"):match("^BUSY") end, 2, 0.02))
    local seen = #log
    a:resign() -- its release hears BUSY
    assert.truthy(loop_until(function() return find(log, "^a error .*BUSY", seen + 1) end, 1),
                  table.concat(log, "\n"))
    assert.truthy(loop_until(function() return a:is_leader() or b:is_leader() end, 4),
                  table.concat(log, "\n"))
    assert.is_true(b:is_leader(), table.concat(log, "\n"))
    assert.equal(2, b:term())
    assert.equal(1, Rec.count(log, "^a elected"), table.concat(log, "\n"))
    assert.truthy(find(log, "^a error .*release of .*BUSY"), table.concat(log, "\n"))
    a:stop(); b:stop(); s1:close(); s2:close()
  end)

  it("a leader keeps its term when its reconnect meets a refusal that passes (max clients)", function()
    local s = keep(assert(L.store(srv.url)))
    local log, record = recorder()
    local a = keep(Rec.candidate(s, new_key(), "a", record, { ttl = 10 }))
    a:run()
    assert.truthy(loop_until(function() return a:is_leader() end, 2))
    -- one connection (this redis-cli's) fills the server for 1.5 s, and ours
    -- are cut: every reconnect hears "ERR max number of clients reached"
    local cli = H.spawn({ "sh", "-c", "printf 'CONFIG SET maxclients 1\\nCLIENT KILL TYPE normal SKIPME yes\\n" ..
      "CLIENT KILL TYPE pubsub\\nBLPOP leadership-spec-nothing 1.5\\nCONFIG SET maxclients 10000\\n' | " ..
      "env -u LD_PRELOAD redis-cli -p " .. srv.port })
    finally(function() H.stop(cli); srv:cli("CONFIG", "SET", "maxclients", "10000") end)
    assert.truthy(loop_until(function() return find(log, "^a error .*max number of clients") end, 3),
                  table.concat(log, "\n"))
    assert.truthy(loop_until(function() return not H.alive(cli) end, 5))
    L.sleep(1.5) -- reconnected, renewing
    assert.is_true(a:is_leader(), table.concat(log, "\n"))
    assert.equal(1, a:term())
    assert.equal(0, Rec.count(log, "^a lost"), table.concat(log, "\n"))
    a:stop(); s:close()
  end)

  it("an ACL user without pub/sub channel rights (Redis 7's default) leads and hands over by polling, told once", function()
    assert.equal("OK", srv:cli("ACL", "SETUSER", "nochan", "on", ">pw", "~*", "+@all", "resetchannels"))
    finally(function() srv:cli("ACL", "DELUSER", "nochan") end)
    local url = "redis://nochan:pw@127.0.0.1:" .. srv.port
    local s1, s2 = keep(assert(L.store(url))), keep(assert(L.store(url)))
    local key = new_key()
    local log, record = recorder()
    local a = keep(Rec.candidate(s1, key, "a", record, { ttl = 5 }))
    local f = keep(Rec.follower(s2, key, "f", record))
    f:run()
    a:run()
    assert.truthy(loop_until(function() return a:is_leader() end, 2), table.concat(log, "\n"))
    assert.equal(1, a:term())
    assert.truthy(loop_until(function() return find(log, "^f sees a 1$") end, 3), table.concat(log, "\n"))
    -- a resign is a release, then (the only candidate) a new term
    a:resign()
    assert.truthy(loop_until(function() return find(log, "^f sees a 2$") end, 5), table.concat(log, "\n"))
    -- no acquire or release failed; the refused SUBSCRIBE is told once to each
    assert.equal(0, Rec.count(log, "failed"), table.concat(log, "\n"))
    assert.equal(1, Rec.count(log, "^a error .*pub/sub connection is dropped"), table.concat(log, "\n"))
    assert.equal(1, Rec.count(log, "^f error .*pub/sub connection is dropped"), table.concat(log, "\n"))
    assert.equal(0, Rec.count(log, "^. lost [^r]"), table.concat(log, "\n"))
    a:stop(); f:stop(); s1:close(); s2:close()
  end)
end)
