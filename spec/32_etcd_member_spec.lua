-- The etcd backend against a member that hangs (stopped, or cut off by a
-- partition that drops packets) rather than refusing connections: a
-- leader's keepalive must reach another member before its deadline.
local L = require "leadership"
local E = require "etcd"
local Rec = require "record"

local have = H.have("etcd", pending) and H.have("etcdctl", pending)

local new_key = Rec.keys("etcd-member")
local recorder, loop_until, find = Rec.recorder, Rec.loop_until, Rec.find

describe("etcd cluster with a hung member", function()
  if not have then return end
  after_each(function() Rec.nothing_alive(5, 2) end)

  it("a leader with ttl 3 keeps its term while the member its store talks to is stopped", function()
    local cluster = E.start { members = 3 }
    local hung = cluster.members[1]
    local s, a
    finally(function() -- busted keeps one finally per spec
      if a then a:stop() end
      if s then s:close() end
      a, s = nil, nil -- this closure outlives the spec: the leak check collects them
      if H.alive(hung.proc) then H.signal(hung.proc, "CONT") end
      L.run(3) -- the revoke, before the cluster goes
      cluster:stop()
    end)
    -- the store's default timeout (5 s) is more than the renew_deadline (2 s)
    s = assert(L.store(cluster.url))
    local log, record = recorder()
    a = Rec.candidate(s, new_key(), "a", record, { ttl = 3 })
    a:run()
    assert.truthy(loop_until(function() return a:is_leader() end, 10), table.concat(log, "\n"))
    local _, elected = find(log, "^a elected ")
    -- the store starts on the first member listed: the one stopped now
    H.signal(hung.proc, "STOP")
    loop_until(function() return find(log, "^a lost ") end, 6)
    H.signal(hung.proc, "CONT")
    assert.is_nil(find(log, "^a lost "), table.concat(log, "\n"))
    assert.truthy(a:is_leader(), table.concat(log, "\n"))
    assert.equal(1, Rec.count(log, "^a elected "), table.concat(log, "\n"))
    assert.equal(elected, (select(2, find(log, "^a elected "))))
  end)
end)
