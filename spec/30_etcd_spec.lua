-- The etcd backend against real etcd servers (Debian's etcd-server),
-- started here on 127.0.0.1: one member for the in-process and process
-- specs, three for failover, and ones with TLS and authentication.
local L = require "leadership"
local E = require "etcd"
local C = require "cluster"
local Rec = require "record"
local Dns = require "silent_dns"

local have = H.have("etcd", pending) and H.have("etcdctl", pending)

local new_key = Rec.keys("etcd")
local recorder, find, count, follower, loop_until = Rec.recorder, Rec.find, Rec.count, Rec.follower, Rec.loop_until

local function candidate(store, key, name, record, ttl)
  return Rec.candidate(store, key, name, record, { ttl = ttl or 3 })
end

local function leak_check() Rec.nothing_alive(5, 2) end

-- The URL of spec/support/etcd_garbage.py in `mode` on a free port, in
-- front of the etcd server `upstream` for the modes that pass calls on;
-- it dies with the spec.
local function garbage_etcd(mode, upstream)
  local port = H.free_port()
  local upstream_port = upstream and upstream.url:match(":(%d+)$")
  local proc = H.spawn({ "python3", "spec/support/etcd_garbage.py", tostring(port), mode, upstream_port })
  finally(function() H.signal(proc, "KILL") end)
  assert.truthy(H.wait_until(function()
    return H.sh(("ss -Htln '( sport = :%d )'"):format(port)) ~= ""
  end, 5))
  return "etcd://127.0.0.1:" .. port
end

-- Established TCP connections from this process to 127.0.0.1:port.
local function my_connections(port)
  local stat = H.read("/proc/self/stat")
  local pid = stat:match("^(%d+)")
  local out = H.sh(("ss -Htnp state established '( dport = :%d )' 2>/dev/null"):format(port))
  local n = 0
  for line in out:gmatch("[^\n]+") do
    if line:find("pid=" .. pid .. ",", 1, true) then n = n + 1 end
  end
  return n
end

describe("etcd store", function()
  if not have then return end
  local srv
  setup(function() srv = E.start() end)
  teardown(function() if srv then srv:stop() end end)

  describe("in one process", function()
    after_each(leak_check)

    it("elects one, tells the others and a follower; the term is the key's create_revision", function()
      local s = assert(L.store(srv.url))
      local key = new_key()
      local log, record = recorder()
      local f = follower(s, key, "f", record)
      f:run()
      assert.truthy(loop_until(function() return find(log, "^f sees nil") end, 3), table.concat(log, "\n"))
      local a = candidate(s, key, "a", record)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 3), table.concat(log, "\n"))
      local b = candidate(s, key, "b", record)
      b:run()
      local term = a:term()
      assert.truthy(loop_until(function()
        return find(log, "^b sees a " .. term .. "$") and find(log, "^f sees a " .. term .. "$")
      end, 3), table.concat(log, "\n"))
      assert.is_false(b:is_leader())
      assert.equal("a", (f:leader()))
      -- the queue in etcd: a's key first, named by the lease, holding the value
      local keys = srv:keys(key .. "/")
      assert.equal(2, #keys)
      assert.equal("a", keys[1].value)
      assert.equal("b", keys[2].value)
      assert.equal(term, tonumber(keys[1].create_revision))
      assert.matches("^" .. key:gsub("%p", "%%%0") .. "/%x+$", keys[1].key)
      -- one store, one lease: both keys carry it
      assert.equal(keys[1].lease, keys[2].lease)
      a:stop()
      assert.truthy(loop_until(function() return b:is_leader() end, 3), table.concat(log, "\n"))
      assert.truthy(b:term() > term)
      assert.truthy(loop_until(function() return find(log, "^f sees b " .. b:term() .. "$") end, 3))
      b:stop()
      assert.truthy(loop_until(function() return find(log, "^f sees nil", find(log, "^f sees b")) end, 3),
        table.concat(log, "\n"))
      f:stop(); s:close()
    end)

    it("renews one lease per store and ttl for all its elections", function()
      local s = assert(L.store(srv.url))
      local log, record = recorder()
      local cs = {}
      for i = 1, 3 do
        cs[i] = candidate(s, new_key(), "c" .. i, record, 2)
        cs[i]:run()
      end
      -- another ttl: another lease
      local other = candidate(s, new_key(), "o", record, 4)
      other:run()
      assert.truthy(loop_until(function()
        return cs[1]:is_leader() and cs[2]:is_leader() and cs[3]:is_leader() and other:is_leader()
      end, 3), table.concat(log, "\n"))
      assert.equal(2, #srv:leases())
      L.sleep(4.5) -- over two ttls
      for i = 1, 3 do
        assert.is_true(cs[i]:is_leader())
        local stats = cs[i]:stats()
        assert.truthy(stats.renewals >= 5, "renewals: " .. tostring(stats.renewals))
      end
      assert.equal(0, count(log, " lost "), table.concat(log, "\n"))
      assert.equal(0, count(log, " error "), table.concat(log, "\n"))
      for i = 1, 3 do cs[i]:stop() end
      other:stop()
      -- the last user gone: the leases are revoked, not left to expire
      assert.truthy(loop_until(function() return #srv:leases() == 0 end, 2), srv:ctl("lease", "list"))
      s:close()
    end)

    it("keeps a shared lease alive often enough for the shortest renew_deadline on it", function()
      local s = assert(L.store(srv.url))
      local log, record = recorder()
      local a = candidate(s, new_key(), "a", record, 3) -- the default renew_deadline, 2 s
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 3), table.concat(log, "\n"))
      -- joins a's lease, kept alive every second until now
      local b = Rec.candidate(s, new_key(), "b", record, { ttl = 3, renew_deadline = 0.4 })
      b:run()
      assert.truthy(loop_until(function() return b:is_leader() end, 3), table.concat(log, "\n"))
      L.sleep(2) -- five of b's deadlines
      assert.equal(1, #srv:leases())
      assert.is_true(a:is_leader())
      assert.is_true(b:is_leader())
      assert.equal(0, count(log, " lost "), table.concat(log, "\n"))
      assert.equal(1, count(log, "^b elected"), table.concat(log, "\n"))
      a:stop(); b:stop()
      s:close()
    end)

    it("a lone leader whose renew_deadline is below a third of its ttl keeps its term, then shares its lease", function()
      local s = assert(L.store(srv.url))
      local log, record = recorder()
      local a = Rec.candidate(s, new_key(), "a", record, { ttl = 3, renew_deadline = 0.5 })
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 3), table.concat(log, "\n"))
      local term = a:term()
      L.sleep(3) -- six deadlines, three ttl/3 periods: it lost every second before
      assert.is_true(a:is_leader(), table.concat(log, "\n"))
      assert.equal(term, a:term())
      assert.equal(1, count(log, "^a elected"), table.concat(log, "\n"))
      -- an election with the default renew_deadline (2 s) on the same lease
      -- must not lengthen its keepalive period
      local b = candidate(s, new_key(), "b", record, 3)
      b:run()
      assert.truthy(loop_until(function() return b:is_leader() end, 3), table.concat(log, "\n"))
      L.sleep(2)
      assert.equal(1, #srv:leases())
      assert.is_true(a:is_leader() and b:is_leader(), table.concat(log, "\n"))
      assert.equal(term, a:term())
      assert.equal(0, count(log, " lost "), table.concat(log, "\n"))
      assert.equal(0, count(log, " error "), table.concat(log, "\n"))
      assert.equal(1, count(log, "^a elected"), table.concat(log, "\n"))
      a:stop(); b:stop()
      s:close()
    end)

    it("a short renew_deadline joining late in its lease's keepalive period is elected at once", function()
      local s = assert(L.store(srv.url))
      local log, record = recorder()
      local a = candidate(s, new_key(), "a", record, 3) -- keepalives every second
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 3), table.concat(log, "\n"))
      L.sleep(0.8) -- the last keepalive was (about) 0.8 s ago
      local b = Rec.candidate(s, new_key(), "b", record, { ttl = 3, renew_deadline = 0.4 })
      -- its first acquisition rests on a keepalive sent after it joined,
      -- not on that old one: never "acquired past deadline" and a retry
      b.retry = function(_, message) record("b", "retry", message); return 0.05 end
      b:run()
      assert.truthy(loop_until(function() return b:is_leader() end, 1), table.concat(log, "\n"))
      assert.equal(0, count(log, "^b retry"), table.concat(log, "\n"))
      L.sleep(1.2)
      assert.is_true(a:is_leader() and b:is_leader(), table.concat(log, "\n"))
      assert.equal(1, count(log, "^b elected"), table.concat(log, "\n"))
      assert.equal(0, count(log, " lost "), table.concat(log, "\n"))
      a:stop(); b:stop()
      s:close()
    end)

    it("fair queue: leaders follow creation order; a resign wakes only the successor", function()
      local key = new_key()
      local log, record = recorder()
      local stores, cs = {}, {}
      for i = 1, 5 do
        stores[i] = assert(L.store(srv.url))
        cs[i] = candidate(stores[i], key, "c" .. i, record)
        cs[i]:run()
        -- each queues only after the one before it
        assert.truthy(loop_until(function() return #srv:keys(key .. "/") == i end, 3))
      end
      assert.truthy(loop_until(function() return cs[1]:is_leader() end, 3))
      L.sleep(0.2)
      for round = 1, 4 do
        local mark = #log
        cs[round]:resign()
        assert.truthy(loop_until(function() return cs[round + 1]:is_leader() end, 3),
          table.concat(log, "\n"))
        L.sleep(0.3)
        -- who heard anything: the one who resigned and its successor only
        local heard = {}
        for i = mark + 1, #log do heard[log[i]:match("^(%S+)")] = true end
        for i = round + 2, 5 do
          assert.is_nil(heard["c" .. i], ("c%d woke up when c%d resigned:\n%s"):format(
            i, round, table.concat(log, "\n", mark + 1)))
        end
        assert.truthy(heard["c" .. (round + 1)])
      end
      -- the order of terms is the order of creation
      local terms = {}
      for _, line in ipairs(log) do
        local who, term = line:match("^(c%d) elected (%d+)$")
        if who then terms[#terms + 1] = { who = who, term = tonumber(term) } end
      end
      for i = 1, 5 do assert.equal("c" .. i, terms[i].who) end
      for i = 2, #terms do assert.truthy(terms[i].term > terms[i - 1].term) end
      for i = 1, 5 do cs[i]:stop(); stores[i]:close() end
    end)

    it("a lease revoked behind our back: lost 'session', elected again on a new lease", function()
      local s = assert(L.store(srv.url))
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record, 5)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 3))
      local first = a:term()
      local leases = srv:leases()
      assert.equal(1, #leases)
      assert.matches("revoked", srv:ctl("lease", "revoke", leases[1]))
      assert.truthy(loop_until(function() return find(log, "^a lost session$") end, 3), table.concat(log, "\n"))
      assert.truthy(loop_until(function() return a:is_leader() end, 3), table.concat(log, "\n"))
      assert.truthy(a:term() > first)
      local now = srv:leases()
      assert.equal(1, #now)
      assert.not_equal(leases[1], now[1])
      a:stop(); s:close()
    end)

    it("a key deleted behind our back: lost 'deleted', elected again", function()
      local s = assert(L.store(srv.url))
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record, 5)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 3))
      local first = a:term()
      assert.matches("1", srv:ctl("del", "--prefix", key .. "/"))
      assert.truthy(loop_until(function() return find(log, "^a lost deleted$") end, 3), table.concat(log, "\n"))
      assert.truthy(loop_until(function() return a:is_leader() end, 3), table.concat(log, "\n"))
      assert.truthy(a:term() > first)
      assert.is_nil(find(log, "session"))
      a:stop(); s:close()
    end)

    it("elects under a key of 700 bytes: its candidate key is '<key>/<lease>', never cut short", function()
      local s = assert(L.store(srv.url))
      local key = new_key() .. "/" .. string.rep("k", 700)
      local log, record = recorder()
      local a = candidate(s, key, "a", record)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 3), table.concat(log, "\n"))
      local keys = srv:keys(key .. "/")
      assert.equal(1, #keys)
      assert.matches("^" .. key:gsub("%p", "%%%0") .. "/%x+$", keys[1].key)
      assert.equal(a:term(), tonumber(keys[1].create_revision))
      assert.is_nil(find(log, "malformed"))
      a:stop(); s:close()
    end)

    it("1,000 elections in one process: all elected over at most 4 connections", function()
      local s = assert(L.store(srv.url))
      local port = tonumber(srv.url:match(":(%d+)$"))
      local cs = {}
      local elected = 0
      local t0 = L.now()
      for i = 1, 1000 do
        local c = L.candidate(s, new_key(), "n" .. i, { ttl = 5 })
        c.on_elected = function() elected = elected + 1 end
        c.on_error = function(_, err) io.stderr:write("error: ", tostring(err), "\n") end
        c:run()
        cs[i] = c
      end
      local most = 0
      assert.truthy(loop_until(function()
        most = math.max(most, my_connections(port))
        return elected == 1000
      end, 60), "elected: " .. elected) -- seconds on an idle machine; a loaded one is slower
      local took = L.now() - t0
      for _ = 1, 5 do -- renewals running
        L.sleep(0.4)
        most = math.max(most, my_connections(port))
      end
      io.stderr:write(("\n[etcd] 1000 elections: all elected in %.2f s, at most %d TCP connections\n")
        :format(took, most))
      assert.truthy(most >= 1 and most <= 4, "connections: " .. most)
      for i = 1, 1000 do assert.is_true(cs[i]:is_leader()) end
      assert.equal(1, #srv:leases())
      for i = 1, 1000 do cs[i]:stop() end
      cs = nil
      s:close()
      assert.truthy(loop_until(function() return #srv:leases() == 0 end, 5))
    end)

    it("moves past a dead endpoint to the next one without an error", function()
      local dead = H.free_port()
      local s = assert(L.store(("etcd://127.0.0.1:%d,%s"):format(dead, srv.hosts)))
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record)
      local f = follower(s, key, "f", record)
      a:run(); f:run()
      assert.truthy(loop_until(function() return a:is_leader() and find(log, "^f sees a") end, 5),
        table.concat(log, "\n"))
      assert.is_nil(find(log, " error "), table.concat(log, "\n"))
      a:stop(); f:stop(); s:close()
    end)

    it("rejects unknown options and half a client certificate", function()
      local s, err = L.store(srv.url, { tls = { ca = "/x", cert = "/y" } })
      assert.is_nil(s)
      assert.matches("tls.cert and tls.key", err)
      -- a misspelt option is a bad argument: it raises, with a hint
      local ok
      ok, err = pcall(L.store, srv.url .. "?timout=3")
      assert.is_false(ok)
      assert.matches("'timout'.*did you mean 'timeout'", err)
      ok, err = pcall(L.store, srv.url, { tls = { cafile = "/x" } })
      assert.is_false(ok)
      assert.matches("'tls.cafile'", err)
      -- credentials go to etcd in JSON: bytes that are no UTF-8 are refused here,
      -- not when the first request is made (that crashed)
      s, err = L.store(srv.url, { auth = { username = "alice", password = "pw\xff" } })
      assert.is_nil(s)
      assert.matches("must be UTF%-8", err)
      s, err = L.store((srv.url:gsub("etcd://", "etcd://al\xffice:pw@")))
      assert.is_nil(s)
      assert.matches("must be UTF%-8", err)
    end)
  end)

  describe("with garbage from the server", function()
    after_each(leak_check)
    local have_python = H.have("python3", pending)

    for _, mode in ipairs({ "badjson", "types", "http500", "hangup" }) do
      it("turns '" .. mode .. "' into errors and retries, never crashes", function()
        if not have_python then return end
        local s = assert(L.store(garbage_etcd(mode), { timeout = 1 }))
        local log, record = recorder()
        local a = candidate(s, new_key(), "a", record)
        a.retry = function(attempt) return attempt < 3 and 0.05 or nil end
        local f = follower(s, new_key(), "f", record)
        f.retry = a.retry
        a:run(); f:run()
        assert.truthy(loop_until(function() return count(log, "^a error") >= 3 and count(log, "^f error") >= 3 end, 10),
          table.concat(log, "\n"))
        for _, line in ipairs(log) do
          assert.matches("^%a error .*etcd", line)
        end
        assert.is_false(a:is_leader())
        a:stop(); f:stop(); s:close()
        L.run(5) -- the clean-up, while the server still runs
      end)
    end

    it("cuts off a response body that does not end, naming it", function()
      if not have_python then return end
      local s = assert(L.store(garbage_etcd("hugebody"), { timeout = 5 }))
      local log, record = recorder()
      -- ttl 30: the grant may take 6.5 s (half the renew period), time to
      -- read 64 MB under ASan too (some 50 MB/s); ttl 3 gives it 0.65 s
      local a = candidate(s, new_key(), "a", record, 30)
      a.retry = function() return nil end
      a:run()
      assert.truthy(loop_until(function() return find(log, "^a error") end, 10), table.concat(log, "\n"))
      assert.matches("the response body is over 64 MB", select(2, find(log, "^a error")))
      a:stop(); s:close()
      L.run(5)
    end)

    it("refuses a response with more headers than a store sends, naming it", function()
      if not have_python then return end
      local s = assert(L.store(garbage_etcd("manyheaders"), { timeout = 5 }))
      local log, record = recorder()
      local a = candidate(s, new_key(), "a", record)
      a.retry = function() return nil end
      a:run()
      assert.truthy(loop_until(function() return find(log, "^a error") end, 10), table.concat(log, "\n"))
      assert.matches("the response has over 100 headers", select(2, find(log, "^a error")))
      assert.is_false(a:is_leader())
      a:stop(); s:close()
      L.run(5)
    end)
  end)

  describe("with leases shorter than asked", function()
    after_each(leak_check)
    local have_python = H.have("python3", pending)

    -- A deadline of 2/3 of a 5 s ttl would outlast a 1 s lease: two leaders.
    it("never leads on a lease granted shorter than its ttl, and says why", function()
      if not have_python then return end
      local s = assert(L.store(garbage_etcd("shortttl", srv)))
      local log, record = recorder()
      local a = candidate(s, new_key(), "a", record, 5)
      a.retry = function(attempt) return attempt < 2 and 0.05 or nil end
      a:run()
      assert.truthy(loop_until(function() return count(log, "^a error") >= 2 end, 10), table.concat(log, "\n"))
      assert.matches("lease granted for 1 s, shorter than the 5 s asked", select(2, find(log, "^a error")))
      assert.is_nil(find(log, "^a elected"), table.concat(log, "\n"))
      a:stop(); s:close()
      L.run(5) -- the clean-up, while the server still runs
    end)
  end)

  describe("with a broken watch stream", function()
    after_each(leak_check)
    local have_python = H.have("python3", pending)

    -- A store on etcd_garbage.py in `mode` before the real etcd, leader a
    -- elected on a new key and follower f running; the relay dies with the spec.
    local function behind_relay(mode)
      local s = assert(L.store(garbage_etcd(mode, srv)))
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record)
      local f = follower(s, key, "f", record)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 5), table.concat(log, "\n"))
      f:run()
      return s, key, log, record, a, f
    end

    for _, case in ipairs({ { "watchjunk", "watch stream" }, { "watchcut", "watch stream" },
                            { "watchhuge", "watch message over 64 MB" } }) do
      local mode, says = case[1], case[2]
      it("turns '" .. mode .. "' into errors and reconnects; the leader stays", function()
        if not have_python then return end
        local s, _, log, _, a, f = behind_relay(mode)
        -- watchhuge sends 70 MB per stream, and a's stream breaks too:
        -- under ASan reading 256 MB takes seconds
        assert.truthy(loop_until(function() return count(log, "^f error") >= 2 end, 30), table.concat(log, "\n"))
        assert.matches(says, select(2, find(log, "^f error")))
        L.sleep(1)
        -- the stream's trouble is no reason to step down: renewals go on
        assert.is_true(a:is_leader())
        assert.is_nil(find(log, "^a lost"), table.concat(log, "\n"))
        assert.equal("a", (f:leader()))
        a:stop(); f:stop(); s:close()
        L.run(5) -- the clean-up, while the server still runs
      end)
    end

    -- A lone leader's stream has no heartbeat of its own (an idle leader
    -- wakes for its keep-alives only): they ask for progress and notice the
    -- silence, so a delete of its key cannot go unseen for long.
    it("a lone leader notices a silent stream at its keep-alives, and stays leader", function()
      if not have_python then return end
      local s = assert(L.store(garbage_etcd("watchstall", srv)))
      local log, record = recorder()
      local a = candidate(s, new_key(), "a", record, 3)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 5), table.concat(log, "\n"))
      local t0 = L.now()
      -- the first break is mended quietly; the second is reported
      assert.truthy(loop_until(function() return find(log, "^a error") end, 20), table.concat(log, "\n"))
      assert.matches("no answer from the member", select(2, find(log, "^a error")))
      -- each: silence (3.5 s) past an unanswered keep-alive's request (ttl/3)
      assert.truthy(L.now() - t0 < 2 * (3.5 + 2 * 1) + 1, ("noticed after %.1f s"):format(L.now() - t0))
      assert.is_true(a:is_leader())
      assert.is_nil(find(log, "^a lost"), table.concat(log, "\n"))
      a:stop(); s:close()
      L.run(5) -- the clean-up, while the server still runs
    end)

    it("reads a stream that arrives a byte at a time, UTF-8 split too, without an error", function()
      if not have_python then return end
      local s, key, log, record, a, f = behind_relay("watchbytes")
      assert.truthy(loop_until(function() return f:leader() == "a" end, 5), table.concat(log, "\n"))
      local b = candidate(s, key, "b", record)
      b:run()
      a:stop()
      -- the handover reaches the follower through the watch stream
      assert.truthy(loop_until(function() return f:leader() == "b" end, 10), table.concat(log, "\n"))
      assert.is_nil(find(log, "^%a+ error"), table.concat(log, "\n"))
      b:stop(); f:stop(); s:close()
      L.run(5)
    end)
  end)

  C.describe_processes(_ENV, "etcd", function() return srv.url end,
    { ttl = 5, kill9 = 6, pause = 7 })
end)

describe("etcd cluster of three", function()
  if not have then return end
  local cluster
  setup(function() cluster = E.start { members = 3 } end)
  teardown(function() if cluster then cluster:stop() end end)
  after_each(leak_check)

  it("kill the member the clients use: the election goes on, never two leaders", function()
    local procs = C.start { store = cluster.url, ttl = 5 }
    finally(function() procs:stop() end)
    local first = procs:wait_leader(10)
    assert.truthy(first, procs:dump())
    -- every client starts on the first member listed
    cluster:kill(1)
    local t_kill = require("leadership").time()
    L.sleep(8)
    local leaders = procs:leaders()
    assert.equal(1, #leaders, procs:dump())
    local violation = procs:check_stamps()
    assert.is_nil(violation, (violation or "") .. "\n" .. procs:dump())
    -- the leader kept working through the failover (its lease survived)
    local last = 0
    for _, st in ipairs(procs:read_stamps()) do last = math.max(last, st.t) end
    assert.truthy(last > t_kill + 6, procs:dump())
    io.stderr:write(("\n[etcd] member killed: leader %s before, %s after\n"):format(first, leaders[1]))
  end)

  it("a follower reconnecting after compaction re-reads, never reports a stale leader", function()
    -- the follower talks to member 2 only, the candidates to member 3 only
    cluster:restart_dead()
    local m2, m3 = cluster.members[2], cluster.members[3]
    local fs = assert(L.store("etcd://127.0.0.1:" .. m2.port))
    local cs = assert(L.store("etcd://127.0.0.1:" .. m3.port))
    local key = new_key()
    local log, record = recorder()
    local a = candidate(cs, key, "a", record, 5)
    local b = candidate(cs, key, "b", record, 5)
    local f = follower(fs, key, "f", record)
    a:run()
    assert.truthy(loop_until(function() return a:is_leader() end, 5))
    b:run()
    f:run()
    assert.truthy(loop_until(function() return find(log, "^f sees a ") end, 5), table.concat(log, "\n"))
    cluster:kill(2)
    -- (if 2 led the raft group, the other two elect a new raft leader first)
    assert.truthy(loop_until(function() return cluster:healthy() end, 15), cluster:logs())
    local mark = #log + 1
    a:resign()
    assert.truthy(loop_until(function() return b:is_leader() end, 10), table.concat(log, "\n"))
    a:stop()
    -- history compacted past the follower's resume point
    local status = cluster:ctl("endpoint", "status", "-w", "json")
    local revision = tonumber(status:match('"revision":(%d+)'))
    assert.truthy(revision, status)
    assert.matches("compacted", cluster:ctl("compact", tostring(revision)))
    cluster:launch(m2)
    assert.truthy(loop_until(function() return find(log, "^f sees b ", mark) end, 15), table.concat(log, "\n"))
    -- after the reconnect it never reported a (stale) a
    assert.is_nil(find(log, "^f sees a ", mark), table.concat(log, "\n"))
    -- and the compaction was handled, not reported as a failed watch
    assert.is_nil(find(log, "^f error.*cancel"), table.concat(log, "\n"))
    assert.equal("b", (f:leader()))
    b:stop(); f:stop(); fs:close(); cs:close()
  end)
end)

describe("etcd with TLS and authentication", function()
  if not have then return end
  if not H.have("openssl", pending) then return end
  after_each(leak_check)

  it("elects over TLS with a client certificate; refuses an unknown CA clearly", function()
    local srv = E.start { tls = true }
    finally(function() srv:stop() end)
    local tls = { ca = srv.tls.ca, cert = srv.tls.cert, key = srv.tls.key }
    local s = assert(L.store(srv.url, { tls = tls }))
    local log, record = recorder()
    local a = candidate(s, new_key(), "a", record)
    a:run()
    assert.truthy(loop_until(function() return a:is_leader() end, 5), table.concat(log, "\n"))
    a:stop(); s:close()
    -- the server's certificate checked against a CA that did not sign it
    local other = E.make_certs(H.tmpdir("certs"))
    local bad = assert(L.store(srv.url, { tls = { ca = other.ca, cert = srv.tls.cert, key = srv.tls.key } }))
    local blog, brecord = recorder()
    local b = candidate(bad, new_key(), "b", brecord)
    b.retry = function(attempt) return attempt < 2 and 0.1 or nil end
    b:run()
    assert.truthy(loop_until(function() return find(blog, "^b error") end, 5))
    assert.matches("certificate", blog[1])
    b:stop(); bad:close()
    L.run(5)
  end)

  -- On store s: candidate a elected on a new key, seen by follower f.
  local function elect_and_follow(s)
    local log, record = recorder()
    local key = new_key()
    local a = candidate(s, key, "a", record)
    local f = follower(s, key, "f", record)
    a:run(); f:run()
    assert.truthy(loop_until(function() return a:is_leader() and find(log, "^f sees a") end, 5),
      table.concat(log, "\n"))
    return log, a, f
  end

  it("authenticates as a user; a wrong password is a clear error and never shown", function()
    local srv = E.start()
    finally(function() srv:stop() end)
    srv:enable_auth("alice", "s3cret-pw")
    local s = assert(L.store(srv.url, { auth = { username = "alice", password = "s3cret-pw" } }))
    local log, a, f = elect_and_follow(s)
    a:stop(); f:stop(); s:close()
    -- credentials in the URL work too
    local u = assert(L.store((srv.url:gsub("etcd://", "etcd://alice:s3cret-pw@"))))
    local ulog, urecord = recorder()
    local c = candidate(u, new_key(), "c", urecord)
    c:run()
    assert.truthy(loop_until(function() return c:is_leader() end, 5), table.concat(ulog, "\n"))
    c:stop(); u:close()
    -- a wrong password
    local bad = assert(L.store(srv.url, { auth = { username = "alice", password = "wrong-pw-123" } }))
    local blog, brecord = recorder()
    local b = candidate(bad, new_key(), "b", brecord)
    b.retry = function(attempt) return attempt < 2 and 0.1 or nil end
    b:run()
    assert.truthy(loop_until(function() return find(blog, "^b error") end, 5))
    assert.matches("authentication", blog[1])
    assert.matches("alice", blog[1])
    for _, line in ipairs(blog) do assert.is_nil(line:find("wrong-pw-123", 1, true)) end
    -- no password without auth either: a clear hint
    local none = assert(L.store(srv.url))
    local nlog, nrecord = recorder()
    local n = candidate(none, new_key(), "n", nrecord)
    n.retry = function(attempt) return attempt < 2 and 0.1 or nil end
    n:run()
    assert.truthy(loop_until(function() return find(nlog, "^n error") end, 5))
    assert.matches("auth.username", nlog[1])
    b:stop(); bad:close(); n:stop(); none:close()
    L.run(5)
  end)

  it("gets a new token when etcd has dropped the old one", function()
    -- simple tokens unused for a second expire
    local srv = E.start { args = { "--auth-token-ttl", "1" } }
    finally(function() srv:stop() end)
    srv:enable_auth("bob", "pw-of-bob")
    local s = assert(L.store(srv.url, { auth = { username = "bob", password = "pw-of-bob" } }))
    local log, record = recorder()
    local a = candidate(s, new_key(), "a", record)
    a:run()
    assert.truthy(loop_until(function() return a:is_leader() end, 5), table.concat(log, "\n"))
    a:stop()
    L.sleep(2.5)
    local b = candidate(s, new_key(), "b", record)
    b:run()
    assert.truthy(loop_until(function() return b:is_leader() end, 5), table.concat(log, "\n"))
    assert.is_nil(find(log, " error "), table.concat(log, "\n"))
    -- a permission change makes etcd refuse every older token for writes
    assert.is_nil(srv:ctl("role", "add", "other"):match("Error"))
    local c = candidate(s, new_key(), "c", record)
    c:run()
    assert.truthy(loop_until(function() return c:is_leader() end, 5), table.concat(log, "\n"))
    assert.is_nil(find(log, " error "), table.concat(log, "\n"))
    b:stop(); c:stop(); s:close()
    L.run(5)
  end)

  it("authenticates with a JWT longer than 600 bytes (RS512, a 4096-bit key)", function()
    local dir = H.tmpdir("etcd-jwt")
    local out = H.sh("cd " .. H.quote(dir) .. " && openssl genrsa -out jwt.key 4096 2>&1 && " ..
                     "openssl rsa -in jwt.key -pubout -out jwt.pub 2>&1; echo rc=$?")
    assert(out:match("rc=0%s*$"), out)
    local srv = E.start { args = { "--auth-token", "jwt,pub-key=" .. dir .. "/jwt.pub,priv-key=" ..
                                   dir .. "/jwt.key,sign-method=RS512,ttl=10m" } }
    finally(function() srv:stop() end)
    srv:enable_auth("carol", "pw-of-carol")
    local s = assert(L.store(srv.url, { auth = { username = "carol", password = "pw-of-carol" } }))
    local log, a, f = elect_and_follow(s)
    assert.is_nil(find(log, " error "), table.concat(log, "\n"))
    a:stop(); f:stop(); s:close()
    L.run(5)
  end)
end)

-- A candidate in a mount namespace whose name server never answers
-- (spec/support/silent_dns.lua), on an endpoint named by a host name.
describe("etcd named by a host name", function()
  it("a request timing out in a name lookup that never ends does not hold up the loop", function()
    local why_not = Dns.unavailable()
    if why_not then
      if os.getenv("CI") then error(why_not) end
      return pending(why_not)
    end
    -- libcurl joined its resolver thread when a request timed out in the
    -- lookup: the loop, every deadline on it, waited for the resolver's
    -- 3 s timeout
    local dns = Dns.start("127.0.0.1 localhost\n")
    finally(function() dns:stop() end)
    local child, said = dns:candidate("etcd://etcd-dns-spec:2379", new_key(), 2, 3)
    assert.truthy(H.wait_until(function() return said():find(" ran ") end, 10),
                  said() .. (H.read(child.stderr) or ""))
    assert.truthy(said():find(" error "), said())
    local ran = tonumber(said():match(" ran ([%d.]+)"))
    assert.truthy(ran < 2.5, said())
  end)
end)
