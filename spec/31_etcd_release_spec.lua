-- The etcd backend releasing a key while etcd is away: a stopped or
-- resigned candidate's key must go, even when its lease lives on for the
-- other elections of its store.
local L = require "leadership"
local E = require "etcd"
local Rec = require "record"

local have = H.have("etcd", pending) and H.have("etcdctl", pending)

local new_key = Rec.keys("etcd-release")
local recorder, loop_until = Rec.recorder, Rec.loop_until

describe("etcd store releasing while etcd restarts", function()
  if not have then return end
  after_each(function() Rec.nothing_alive(5, 2) end)

  it("a candidate stopped while etcd is down leaves no key behind under the lease its store keeps alive", function()
    local srv = E.start()
    finally(function() srv:stop() end)
    local s = assert(L.store(srv.url, { timeout = 1 }))
    local log, record = recorder()
    local key = new_key()
    local x = Rec.candidate(s, key, "x", record, { ttl = 10 })
    -- another election of the same store: it keeps the shared lease alive
    local y = Rec.candidate(s, new_key(), "y", record, { ttl = 10 })
    x:run(); y:run()
    assert.truthy(loop_until(function() return x:is_leader() and y:is_leader() end, 5),
      table.concat(log, "\n"))
    srv:kill(1)
    x:stop()
    L.sleep(4) -- every deletion of x's key is refused meanwhile
    srv:restart_dead()
    -- x's key goes once etcd is back, so a candidate elsewhere is elected
    local other = assert(L.store(srv.url))
    local z = Rec.candidate(other, key, "z", record, { ttl = 10 })
    z:run()
    assert.truthy(loop_until(function() return z:is_leader() end, 8),
      table.concat(log, "\n") .. "\n" .. srv:ctl("get", "--prefix", key .. "/", "--keys-only"))
    -- the premise: x's lease lived on (y's), beside z's
    assert.equal(2, #srv:leases())
    y:stop(); z:stop(); s:close(); other:close()
    L.run(5)
  end)
end)
