-- The Redis backend against a real redis-server (Debian's), started here
-- on 127.0.0.1 with no persistence: in-process elections first, then
-- `leadership run` processes checked through their work stamps.
local L = require "leadership"
local R = require "redis"
local Rec = require "record"
local C = require "cluster"

local have = H.have("redis-server", pending) and H.have("redis-cli", pending)

local new_key = Rec.keys("redis")
local recorder, find, loop_until = Rec.recorder, Rec.find, Rec.loop_until

local keep, close_kept = Rec.keeper()

local function open_store(url, options)
  return keep(assert(L.store(url, options)))
end

local function follower(store, key)
  return keep(L.follower(store, key))
end

local function candidate(store, key, name, record, ttl)
  return keep(Rec.candidate(store, key, name, record, { ttl = ttl or 1.5 }))
end

describe("redis store", function()
  if not have then return end
  local srv

  setup(function() srv = R.start() end)
  teardown(function() if srv then srv:stop() end end)

  describe("in one process", function()
    -- Two stores on one new key: a leads at term 1, b waits and has seen
    -- it (retrying every 50 ms: a waiting candidate fails with the
    -- connection). Returns s1, s2, log, a, b.
    local function leader_and_waiter()
      local s1, s2 = open_store(srv.url), open_store(srv.url)
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s1, key, "a", record)
      local b = candidate(s2, key, "b", record)
      b.retry = function() return 0.05 end
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      b:run()
      assert.truthy(loop_until(function() return find(log, "^b sees a 1$") end, 2))
      return s1, s2, log, a, b
    end

    after_each(function()
      close_kept()
      Rec.nothing_alive(3, 1)
    end)

    it("elects one candidate, tells the other and a follower, terms from INCR", function()
      local s = open_store(srv.url)
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record)
      local b = candidate(s, key, "b", record)
      local f = follower(s, key)
      f.on_leader_change = function(_, leader, term) record("f", "sees", leader, term) end
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      b:run(); f:run()
      assert.truthy(loop_until(function() return find(log, "^f sees a 1$") and find(log, "^b sees a 1$") end, 5))
      assert.is_false(b:is_leader())
      assert.equal(1, a:term())
      assert.equal("a", (f:leader()))
      -- the stored form is documented in backends/redis.c
      assert.equal("1", srv:cli("GET", key .. ":term"))
      assert.matches("^1\n%x+\na$", srv:cli("GET", key))
      a:stop(); b:stop(); f:stop(); s:close()
    end)

    it("renews: a leader keeps the key for several ttls", function()
      local s = open_store(srv.url)
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record, 0.6)
      a:run()
      L.sleep(2.5) -- four ttls
      assert.is_true(a:is_leader())
      assert.same({ "a elected 1", "a sees a 1" }, log)
      local stats = a:stats()
      assert.truthy(stats.renewals >= 8, "renewals: " .. tostring(stats.renewals))
      a:stop(); s:close()
    end)

    it("a leader whose renew_deadline is below a third of its ttl renews within it", function()
      local s = open_store(srv.url)
      local key = new_key()
      local log, record = recorder()
      local a = keep(Rec.candidate(s, key, "a", record, { ttl = 1.5, renew_deadline = 0.3 }))
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      L.sleep(1.5) -- five deadlines, three ttl/3 periods
      assert.is_true(a:is_leader(), table.concat(log, "\n"))
      assert.equal(1, a:term())
      assert.is_nil(find(log, "^a lost"), table.concat(log, "\n"))
      a:stop(); s:close()
    end)

    it("resign hands over to the waiting candidate, with a higher term", function()
      local s = open_store(srv.url)
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record)
      local b = candidate(s, key, "b", record)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      b:run()
      L.sleep(0.1)
      a:resign()
      assert.truthy(loop_until(function() return b:is_leader() end, 1))
      assert.equal(2, b:term())
      assert.truthy(find(log, "^a lost resign$"))
      assert.truthy(loop_until(function() return find(log, "^a sees b 2$") end, 1))
      a:stop(); b:stop(); s:close()
    end)

    it("a resign while the connection is down still hands over when it is back", function()
      local s1, s2, log, a, b = leader_and_waiter()
      -- both stores' connections drop; a resigns before its store
      -- reconnects (at least 80 ms later)
      srv:cli("CLIENT", "KILL", "TYPE", "normal")
      L.run(0.02)
      a:resign()
      assert.truthy(loop_until(function() return a:is_leader() or b:is_leader() end, 3),
        table.concat(log, "\n"))
      assert.is_true(b:is_leader(), table.concat(log, "\n"))
      assert.equal(2, b:term())
      a:stop(); b:stop(); s1:close(); s2:close()
    end)

    it("a resign whose release the dropped connection never sent still hands over", function()
      local s1, s2, log, a, b = leader_and_waiter()
      -- the release waits in hiredis's buffer for the loop; the server
      -- drops both stores' connections before the loop runs again
      a:resign()
      srv:cli("CLIENT", "KILL", "TYPE", "normal")
      assert.truthy(loop_until(function() return a:is_leader() or b:is_leader() end, 3),
        table.concat(log, "\n"))
      assert.is_true(b:is_leader(), table.concat(log, "\n"))
      assert.equal(2, b:term())
      a:stop(); b:stop(); s1:close(); s2:close()
    end)

    it("stop deletes the key at once; a follower then sees vacancy", function()
      local s = open_store(srv.url)
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record, 5)
      local f = follower(s, key)
      f.on_leader_change = function(_, leader, term) record("f", "sees", leader, term) end
      a:run(); f:run()
      assert.truthy(loop_until(function() return find(log, "^f sees a 1$") end, 2))
      local seen = #log
      local t0 = L.now()
      a:stop()
      -- ttl is 5 s: only the release (DEL + PUBLISH) can make this quick
      assert.truthy(loop_until(function() return find(log, "^f sees nil", seen + 1) end, 1))
      assert.truthy(L.now() - t0 < 0.5, "vacancy seen after " .. (L.now() - t0))
      assert.equal("", srv:cli("GET", key))
      f:stop(); s:close()
    end)

    it("a waiting candidate takes over when the leader's lease expires", function()
      -- a lease whose holder vanished: written as a dead process would have
      local key = new_key()
      srv:cli("SET", key .. ":term", "41")
      srv:cli("SET", key, "41\ndeadbeefdeadbeef\nghost", "PX", "800")
      local s = open_store(srv.url)
      local log, record = recorder()
      local b = candidate(s, key, "b", record)
      local t0 = L.now()
      b:run()
      assert.truthy(loop_until(function() return find(log, "^b sees ghost 41$") end, 1))
      assert.truthy(loop_until(function() return b:is_leader() end, 2))
      local waited = L.now() - t0
      assert.truthy(waited > 0.6 and waited < 1.1, "took over after " .. waited .. " s")
      assert.equal(42, b:term())
      b:stop(); s:close()
    end)

    it("after SCRIPT FLUSH falls back to EVAL (NOSCRIPT) and keeps the lease", function()
      local s = open_store(srv.url)
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record, 0.6)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      local before = a:stats().renewals
      assert.equal("OK", srv:cli("SCRIPT", "FLUSH"))
      L.sleep(1)
      assert.is_true(a:is_leader())
      assert.truthy(a:stats().renewals >= before + 3)
      assert.is_nil(find(log, "error"), table.concat(log, "\n"))
      assert.is_nil(find(log, "^a lost"))
      a:stop(); s:close()
    end)

    it("loads the acquire, renew and read scripts, not the release it always EVALs", function()
      assert.equal("OK", srv:cli("SCRIPT", "FLUSH"))
      local s = open_store(srv.url)
      local a = candidate(s, new_key(), "a")
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      assert.equal("3", srv:cli("INFO", "memory"):match("number_of_cached_scripts:(%d+)"))
      a:stop(); s:close()
    end)

    it("a leader whose key was taken behind its back loses it ('deleted')", function()
      local s = open_store(srv.url)
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record, 1.5)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      srv:cli("SET", key, "7\nfeedfacefeedface\nusurper", "PX", "3000")
      assert.truthy(loop_until(function() return find(log, "^a lost deleted$") end, 1))
      assert.truthy(loop_until(function() return find(log, "^a sees usurper 7$") end, 1))
      assert.is_false(a:is_leader())
      a:stop(); s:close()
    end)

    it("a lease whose term does not fit 64 bits is foreign, not a wrapped-around term", function()
      local s = open_store(srv.url)
      local key = new_key()
      -- 2^64 + 1: the term would read as 1
      srv:cli("SET", key, "18446744073709551617\nfeedfacefeedface\nusurper", "PX", "3000")
      local log, record = recorder()
      local b = candidate(s, key, "b", record)
      b.retry = function() return 0.2 end
      b:run()
      assert.truthy(loop_until(function() return find(log, "^b error") or find(log, "^b sees") end, 2))
      assert.falsy(find(log, "^b sees"), table.concat(log, "\n"))
      assert.truthy(find(log, "^b error .*not written by leadership"), table.concat(log, "\n"))
      b:stop(); s:close()
    end)

    it("gives every election object its own holder token, even at a freed one's address", function()
      local s = open_store(srv.url)
      local key = new_key()
      local seen = {}
      for i = 1, 5 do
        local c = candidate(s, key, "c" .. i, function() end)
        c:run()
        assert.truthy(loop_until(function() return c:is_leader() end, 2))
        local token = srv:cli("GET", key):match("^%d+\n(%x+)\n")
        assert.is_nil(seen[token], "token reused by election " .. i)
        seen[token] = true
        c:stop()
        c = nil
        collectgarbage()
        collectgarbage()
        L.run(0.3) -- the release, and the freed election
      end
      s:close()
    end)

    it("a leader whose key expired finds out on renewal ('session')", function()
      local s = open_store(srv.url)
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record, 1.5)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      srv:cli("DEL", key) -- the counter stays: not data loss, just gone
      assert.truthy(loop_until(function() return find(log, "^a lost session$") end, 1))
      -- it campaigns on and wins again, with the next term
      assert.truthy(loop_until(function() return a:is_leader() end, 1))
      assert.equal(2, a:term())
      a:stop(); s:close()
    end)

    it("a hung Redis: requests time out, the leader steps down by its deadline, then wins again", function()
      local s = open_store(srv.url, { timeout = 0.3 })
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record, 1.5)
      a.retry = function() return 0.1 end
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      H.signal(srv.proc, "STOP")
      local ok, err = pcall(function()
        -- renewals hang: the local deadline (1 s after the last one) ends it
        assert.truthy(loop_until(function() return find(log, "^a lost deadline$") end, 2.5))
        assert.truthy(find(log, "^a error .*no reply within 0.3s"), table.concat(log, "\n"))
        -- reconnects meet a server that accepts but never answers
        assert.truthy(loop_until(function() return find(log, "no connection within 0.3s") end, 3),
                      table.concat(log, "\n"))
        assert.is_false(a:is_leader())
      end)
      H.signal(srv.proc, "CONT")
      assert(ok, err)
      assert.truthy(loop_until(function() return a:is_leader() end, 3), table.concat(log, "\n"))
      assert.equal("PONG", srv:cli("PING"))
      if os.getenv("REDIS_SPEC_DEBUG") then io.stderr:write(table.concat(log, "\n"), "\n") end
      a:stop()
    end)

    it("a leader whose key turned into a list hears WRONGTYPE, steps down, no crash", function()
      local s = open_store(srv.url)
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record, 0.9)
      a.retry = function() return 0.3 end
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      -- in one step, so the renewal cannot find the key merely gone
      srv:cli("EVAL", "redis.call('DEL', KEYS[1]) return redis.call('RPUSH', KEYS[1], 'x')", "1", key)
      assert.truthy(loop_until(function() return find(log, "^a lost") end, 2))
      assert.truthy(find(log, "^a error .*renew of .*WRONGTYPE"), table.concat(log, "\n"))
      assert.is_false(a:is_leader())
      srv:cli("DEL", key)
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      a:stop()
    end)

    it("reports keys of the wrong type and foreign values, and keeps going", function()
      local s = open_store(srv.url)
      local k1, k2 = new_key(), new_key()
      srv:cli("RPUSH", k1, "x")
      srv:cli("SET", k2, "not a lease")
      local log, record = recorder()
      local a = candidate(s, k1, "a", record)
      local b = candidate(s, k2, "b", record)
      a.retry = function() return 0.2 end
      b.retry = function() return 0.2 end
      a:run(); b:run()
      assert.truthy(loop_until(function() return find(log, "^a error") and find(log, "^b error") end, 2))
      local _, ea = find(log, "^a error")
      local _, eb = find(log, "^b error")
      assert.matches("WRONGTYPE", ea)
      assert.matches("not written by leadership", eb)
      assert.is_false(a:is_leader())
      -- fixed by an operator: the next retry wins
      srv:cli("DEL", k1)
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      a:stop(); b:stop(); s:close()
    end)

    it("Redis restarted without its data: the leader keeps its lease and term", function()
      local s = open_store(srv.url)
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record, 3)
      local b = candidate(s, key, "b", record, 3)
      b.retry = function() return 0.1 end
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      b:run()
      assert.truthy(loop_until(function() return find(log, "^b sees a 1$") end, 2))
      srv:restart()
      L.sleep(1.5)
      assert.is_true(a:is_leader())
      assert.equal(1, a:term())
      assert.is_false(b:is_leader())
      assert.is_nil(find(log, "elected 2"))
      assert.is_nil(find(log, "^%a lost"))
      assert.truthy(find(log, "^a error .*connection"))
      -- the lease and the counter are back
      assert.equal("1", srv:cli("GET", key .. ":term"))
      assert.matches("^1\n%x+\na$", srv:cli("GET", key))
      a:stop(); b:stop(); s:close()
    end)

    it("Redis restarted and the leader gone: waits a ttl, then a higher term", function()
      local s = open_store(srv.url)
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record, 1)
      local b = candidate(s, key, "b", record, 1)
      b.retry = function() return 0.05 end
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      b:run()
      assert.truthy(loop_until(function() return find(log, "^b sees a 1$") end, 2))
      -- a dies without a word (no release), then Redis loses everything
      a.on_lost = nil
      srv:kill()
      a:stop()
      srv:launch()
      local t0 = L.now()
      assert.truthy(loop_until(function() return b:is_leader() end, 4))
      local waited = L.now() - t0
      -- a tombstone kept the dead leader's lease for a ttl
      assert.truthy(waited > 0.8, "took over after " .. waited .. " s")
      assert.equal(2, b:term())
      b:stop(); s:close()
    end)

    -- a leads at term 1 and resigns to b (term 2); then Redis comes back from
    -- an older snapshot (AOF everysec, a replica that lagged): a's lease of
    -- term 1 and the counter at 1. With `notify`, a vacancy notice makes a
    -- campaign at once, having seen term 2; without, b finds it on renewing.
    -- Either way b's renew puts its own lease back and nobody takes term 1.
    local function older_lease_restored(notify)
      local s1, s2 = open_store(srv.url), open_store(srv.url)
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s1, key, "a", record, 3)
      local b = candidate(s2, key, "b", record, 3)
      a.retry = function() return 0.05 end
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      local a_lease = srv:cli("GET", key)
      b:run()
      assert.truthy(loop_until(function() return find(log, "^b sees a 1$") end, 2))
      a:resign()
      assert.truthy(loop_until(function() return b:is_leader() and find(log, "^a sees b 2$") end, 3),
                    table.concat(log, "\n"))
      local seen = #log
      assert.equal("OK", srv:cli("SET", key, a_lease, "PX", "3000"))
      assert.equal("OK", srv:cli("SET", key .. ":term", "1"))
      if notify then srv:cli("PUBLISH", key .. ":events", "") end
      assert.truthy(loop_until(function() return srv:cli("GET", key):match("^2\n%x+\nb$") end, 3),
                    srv:cli("GET", key))
      L.sleep(0.3)
      assert.is_nil(find(log, "^a elected", seen + 1), table.concat(log, "\n"))
      assert.is_nil(find(log, "^b lost", seen + 1), table.concat(log, "\n"))
      assert.is_true(b:is_leader())
      assert.equal(2, b:term())
      assert.equal("2", srv:cli("GET", key .. ":term"))
      a:stop(); b:stop(); s1:close(); s2:close()
    end

    it("data loss brings back our own older lease: no term is taken back", function()
      older_lease_restored(true) -- a's acquire leaves a tombstone of term 2
    end)

    it("data loss brings back someone's older lease: the leader renews over it", function()
      older_lease_restored(false)
    end)

    it("a pub/sub connection the server drops at once is retried with a growing delay", function()
      -- the server takes the connection and refuses SUBSCRIBE (as one
      -- refuses a client past maxclients): the connection drops each time
      local own = R.start()
      finally(function() own:stop() end)
      assert.equal("OK", own:cli("ACL", "SETUSER", "default", "-subscribe"))
      local s = open_store(own.url)
      local log, record = recorder()
      local a = candidate(s, new_key(), "a", record)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2), table.concat(log, "\n"))
      local function connections()
        return tonumber(own:cli("INFO", "stats"):match("total_connections_received:(%d+)"))
      end
      local before = connections()
      L.sleep(2)
      -- 0.1, 0.2, 0.4, 0.8, 1 s apart: some 5 in 2 s (and redis-cli's own);
      -- every 0.1 s: some 20
      local made = connections() - before
      assert.truthy(made <= 9, made .. " connections in 2 s")
      assert.is_true(a:is_leader(), table.concat(log, "\n"))
      a:stop(); s:close()
    end)

    it("refuses rediss://, TLS options, several hosts and unknown options clearly", function()
      -- a store that cannot open is nil, message (bad options raise)
      local function open_error(url, options)
        local ok, store, err = pcall(L.store, url, options)
        assert.is_nil(ok and store or nil)
        return ok and err or store
      end
      assert.matches("no TLS support", open_error("rediss://127.0.0.1:" .. srv.port))
      assert.matches("TLS is not available",
                     open_error(srv.url, { tls = { ca = "/etc/ssl/ca.pem" } }))
      assert.matches("exactly one Redis server", open_error("redis://127.0.0.1:1,127.0.0.1:2"))
      assert.matches("did you mean 'poll_interval'", open_error(srv.url .. "?pol_interval=1"))
      assert.matches("no password", open_error("redis://someone@127.0.0.1:" .. srv.port))
      assert.matches("database must be a number", open_error(srv.url .. "/zero"))
    end)

    describe("with requirepass", function()
      local locked
      local password = "s3cret-" .. math.random(1e6)
      setup(function() locked = R.start({ password = password }) end)
      teardown(function() if locked then locked:stop() end end)

      local function first_error(url, options)
        local s = open_store(url, options)
        local log, record = recorder()
        local a = candidate(s, new_key(), "a", record)
        local gave_up = 0
        a.retry = function() gave_up = gave_up + 1 end -- nil: give up
        a:run()
        loop_until(function() return find(log, "error") end, 2)
        a:stop(); s:close()
        local _, line = find(log, "error")
        return line, log
      end

      it("wrong password: a clear error naming AUTH, the password never shown", function()
        local line = first_error("redis://:wrong-" .. password .. "@127.0.0.1:" .. locked.port)
        assert.matches("AUTH failed", line)
        assert.matches("WRONGPASS", line)
        assert.is_nil(line:find(password, 1, true))
      end)

      it("no password: says the server requires AUTH", function()
        local line = first_error("redis://127.0.0.1:" .. locked.port)
        assert.matches("requires AUTH", line)
      end)

      it("right password from the URL or from auth options: elected", function()
        for _, way in ipairs({
          { "redis://:" .. password .. "@127.0.0.1:" .. locked.port },
          { "redis://127.0.0.1:" .. locked.port, { auth = { password = password } } },
          { "redis://default:" .. password .. "@127.0.0.1:" .. locked.port },
        }) do
          local s = open_store(way[1], way[2])
          local log, record = recorder()
          local a = candidate(s, new_key(), "a", record)
          a:run()
          assert.truthy(loop_until(function() return a:is_leader() end, 2), table.concat(log, "\n"))
          a:stop(); s:close()
        end
      end)
    end)
  end)

  -- ttl 2: a kill -9 hands over when the lease runs out, within ttl + 1 s;
  -- a paused leader is replaced within ttl + 2 s and on resume finds its
  -- deadline passed or its key taken
  C.describe_processes(_ENV, "redis", function() return srv.url end,
    { ttl = 2, elect = 5, sigterm = 0.5, rounds = 3, kill9 = 3, pause = 1.5, takeover = 4,
      lost = { "deadline", "deleted" }, counted = true })

  it("Redis restarted mid-election: the election resumes, never two leaders", function()
    local cluster = C.start { store = srv.url, ttl = 3 }
    finally(function() cluster:stop(3) end)
    assert.truthy(cluster:wait_leader(5), cluster:dump())
    os.execute("sleep 0.5")
    local t_restart = L.time()
    srv:restart(0.3)
    os.execute("sleep 3")
    assert.is_nil(cluster:violation())
    local after = 0
    for _, s in ipairs(cluster:read_stamps()) do if s.t > t_restart + 2 then after = after + 1 end end
    assert.truthy(after > 20, "only " .. after .. " stamps after the restart")
    assert.equal(1, #cluster:leaders(), cluster:dump())
  end)
end)
