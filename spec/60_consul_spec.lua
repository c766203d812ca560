-- The Consul backend against the Consul double (no Consul server can be
-- installed here; README.md ("The Consul double") says what the double
-- models). The double expires a session after exactly its TTL, where
-- Consul may wait up to 2x: the stricter case for a client.
--
-- Consul's session TTL floor is 10 s, so the ttl-bound specs take that
-- long; everything that can hand over by release does so in milliseconds.
local L = require "leadership"
local C = require "consul"
local Rec = require "record"
local Cluster = require "cluster"

local have = C.available()
if not have then
  if os.getenv("CI") then error(C.bin .. " is missing: run `make` first") end
  io.stderr:write("\n*** SKIPPED: " .. C.bin .. " is not built (make " .. H.build ..
                  "/consul-double) ***\n")
end

local new_key = Rec.keys("consul")
local recorder, find, loop_until = Rec.recorder, Rec.find, Rec.loop_until

local function candidate(store, key, name, record, ttl)
  return Rec.candidate(store, key, name, record, { ttl = ttl or 10 })
end

describe("consul store (against the Consul double)", function()
  if not have then
    pending("consul-double not built: SKIPPED")
    return
  end
  local srv

  setup(function() srv = C.start() end)
  teardown(function() if srv then srv:stop() end end)

  -- The term the backend reports: the key's CreateIndex + LockIndex.
  local function term_of(key)
    local e = srv:entry(key)
    return math.tointeger(e.CreateIndex + e.LockIndex) -- cjson reads floats
  end

  describe("the double", function()
    -- the rules the backend relies on, checked against the double itself
    it("follows Consul's session and lock rules", function()
      local cjson = require "cjson"
      local code, body = srv:http("PUT", "/v1/session/create", '{"TTL":"5s"}')
      assert.equal(500, code)
      assert.matches("must be between %[10s=24h0m0s%]", body)
      code, body = srv:http("PUT", "/v1/session/create", '{"TTL":"10s","LockDelay":"1s"}')
      assert.equal(200, code)
      local s1 = cjson.decode(body).ID
      local key = new_key()
      assert.same({ 200, "true" }, { srv:http("PUT", "/v1/kv/" .. key .. "?acquire=" .. s1, "a") })
      local e = srv:entry(key)
      assert.equal(1, e.LockIndex)
      assert.equal(s1, e.Session)
      -- re-acquiring one's own lock keeps LockIndex
      srv:http("PUT", "/v1/kv/" .. key .. "?acquire=" .. s1, "a2")
      assert.equal(1, srv:entry(key).LockIndex)
      local _, sbody = srv:http("PUT", "/v1/session/create", '{"TTL":"10s","LockDelay":"0s"}')
      local s2 = cjson.decode(sbody).ID
      assert.same({ 200, "false" }, { srv:http("PUT", "/v1/kv/" .. key .. "?acquire=" .. s2, "b") })
      -- invalidation releases the key and starts s1's lock-delay
      srv:http("PUT", "/v1/session/destroy/" .. s1)
      assert.is_nil(srv:entry(key).Session)
      assert.same({ 200, "false" }, { srv:http("PUT", "/v1/kv/" .. key .. "?acquire=" .. s2, "b") })
      os.execute("sleep 1.05")
      assert.same({ 200, "true" }, { srv:http("PUT", "/v1/kv/" .. key .. "?acquire=" .. s2, "b") })
      assert.equal(2, srv:entry(key).LockIndex)
      code, body = srv:http("PUT", "/v1/kv/" .. key .. "?acquire=" .. s1, "a")
      assert.equal(500, code)
      assert.matches("invalid session", body)
      code = srv:http("PUT", "/v1/session/renew/" .. s1)
      assert.equal(404, code)
      srv:http("PUT", "/v1/session/destroy/" .. s2)
    end)
  end)

  describe("in one process", function()
    after_each(function()
      Rec.nothing_alive(3, 1)
      -- every session was destroyed when its store closed
      assert.same({}, srv:sessions())
    end)

    it("elects one, tells the others, term = CreateIndex + LockIndex; resign hands over at once", function()
      local s1 = assert(L.store(srv.url .. "?lock_delay=0s"))
      local s2 = assert(L.store(srv.url, { lock_delay = 0 }))
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s1, key, "a", record)
      local b = candidate(s2, key, "b", record)
      local f = L.follower(s2, key)
      f.on_leader_change = function(_, leader, term) record("f", "sees", leader, term) end
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2), table.concat(log, "\n"))
      b:run(); f:run()
      local t1 = term_of(key)
      assert.truthy(loop_until(function()
        return find(log, "^f sees a " .. t1 .. "$") and find(log, "^b sees a " .. t1 .. "$")
      end, 2), t1 .. "\n" .. table.concat(log, "\n"))
      assert.equal(t1, a:term())
      assert.is_false(b:is_leader())
      assert.equal("a", (f:leader()))
      local e = srv:entry(key)
      assert.equal(1, e.LockIndex)
      assert.truthy(e.Session)
      -- one session per store, whatever the number of elections on it
      assert.equal(2, #srv:sessions())
      local t0 = L.now()
      a:resign()
      assert.truthy(loop_until(function() return b:is_leader() end, 1))
      local took = L.now() - t0
      assert.truthy(took < 0.5, "resign handover took " .. took .. " s")
      local t2 = term_of(key)
      assert.equal(t2, b:term())
      assert.truthy(t2 > t1)
      assert.equal(2, srv:entry(key).LockIndex)
      assert.truthy(loop_until(function()
        return find(log, "^a sees b " .. t2 .. "$") and find(log, "^f sees b " .. t2 .. "$")
      end, 1))
      assert.truthy(find(log, "^a lost resign$"))
      a:stop(); b:stop(); f:stop(); s1:close(); s2:close()
    end)

    it("stop releases at once (no lock-delay), then destroys the unused session", function()
      local s1 = assert(L.store(srv.url)) -- Consul's default lock-delay, 15 s
      local s2 = assert(L.store(srv.url))
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s1, key, "a", record)
      local b = candidate(s2, key, "b", record)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      b:run()
      assert.truthy(loop_until(function() return find(log, "^b sees a %d+$") end, 2))
      local t0 = L.now()
      a:stop()
      -- a release, not a session destroy: the 15 s lock-delay never starts
      assert.truthy(loop_until(function() return b:is_leader() end, 2), table.concat(log, "\n"))
      assert.truthy(L.now() - t0 < 0.5)
      -- after the release, the session no election uses is destroyed
      assert.truthy(loop_until(function() return #srv:sessions() == 1 end, 1))
      a:stop(); b:stop(); s1:close(); s2:close()
    end)

    it("two candidates of one key on one store: one leads, the other takes over", function()
      local s = assert(L.store(srv.url, { lock_delay = 0 }))
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record)
      local b = candidate(s, key, "b", record)
      a:run(); b:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      L.sleep(0.2)
      assert.is_false(b:is_leader())
      assert.is_nil(find(log, "^b elected"))
      local t1 = a:term()
      a:stop()
      assert.truthy(loop_until(function() return b:is_leader() end, 2), table.concat(log, "\n"))
      assert.equal(term_of(key), b:term())
      assert.truthy(b:term() > t1)
      b:stop(); s:close()
    end)

    it("session destroyed behind our back: lost 'session', a new session, re-elected", function()
      local s = assert(L.store(srv.url, { lock_delay = "500ms" }))
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      local ids = srv:sessions()
      assert.equal(1, #ids)
      local t1 = a:term()
      local t0 = L.now()
      assert.equal(200, (srv:http("PUT", "/v1/session/destroy/" .. ids[1])))
      assert.truthy(loop_until(function() return find(log, "^a lost session$") end, 1))
      assert.truthy(L.now() - t0 < 0.5, "loss noticed after " .. (L.now() - t0) .. " s")
      -- the destroyed session's lock-delay (0.5 s) holds the key, then a wins again
      assert.truthy(loop_until(function() return a:is_leader() end, 3), table.concat(log, "\n"))
      assert.truthy(L.now() - t0 >= 0.5)
      assert.equal(term_of(key), a:term())
      assert.truthy(a:term() > t1)
      local now = srv:sessions()
      assert.equal(1, #now)
      assert.are_not.equal(ids[1], now[1])
      a:stop(); s:close()
    end)

    -- Consul starts LockIndex again at 1 on a key made again: LockIndex
    -- alone would hand out the same term twice
    it("the leader's key deleted behind its back: lost 'deleted', re-acquired with a higher term", function()
      local s = assert(L.store(srv.url, { lock_delay = 0 }))
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      local t1 = a:term()
      srv:http("DELETE", "/v1/kv/" .. key)
      assert.truthy(loop_until(function() return find(log, "^a lost deleted$") end, 1))
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      assert.equal(1, srv:entry(key).LockIndex)
      assert.equal(term_of(key), a:term())
      assert.truthy(a:term() > t1, a:term() .. " after " .. t1)
      a:stop(); s:close()
    end)

    it("a follower restarts its blocking loop when the index goes backwards", function()
      local s = assert(L.store(srv.url, { lock_delay = 0, wait = 20 }))
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record)
      local b = candidate(s, key .. "-other", "b", record) -- pushes the index up
      local f = L.follower(s, key)
      f.on_leader_change = function(_, leader, term) record("f", "sees", leader, term) end
      a:run(); b:run(); f:run()
      assert.truthy(loop_until(function() return find(log, "^f sees a %d+$") and b:is_leader() end, 2))
      -- a snapshot restore: every index drops, every blocking query returns
      assert.equal(200, (srv:http("PUT", "/v1/double/rewind?index=1")))
      L.sleep(0.2)
      -- the leader changes: a follower still blocking on the old, higher
      -- index would not hear of it for `wait` (20 s)
      a:stop()
      assert.truthy(loop_until(function() return find(log, "^f sees nil") end, 2), table.concat(log, "\n"))
      b:stop(); f:stop(); s:close()
    end)

    it("a negative LockIndex from the server is refused, not taken as a term near 2^64", function()
      local s = assert(L.store(srv.url, { lock_delay = 0 }))
      local key = new_key()
      local log, record = recorder()
      -- an unlocked key whose LockIndex the next acquire turns into 2^64 - 3,
      -- which the server's JSON carries as -3
      assert.equal(200, (srv:http("PUT", "/v1/kv/" .. key)))
      assert.equal(200, (srv:http("PUT", "/v1/double/lockindex?key=" .. key .. "&index=18446744073709551612")))
      local a = candidate(s, key, "a", record)
      a:run()
      assert.truthy(loop_until(function() return find(log, "^a error .*unexpected answer") end, 2),
                    table.concat(log, "\n"))
      assert.is_false(a:is_leader())
      assert.falsy(find(log, "^a elected"), table.concat(log, "\n"))
      a:stop(); s:close()
    end)

    it("keeps leadership across several renewals (the double expires at exactly TTL)", function()
      local s = assert(L.store(srv.url, { lock_delay = 0 }))
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      L.sleep(12.5) -- past the session TTL: only renewals keep it
      assert.is_true(a:is_leader())
      assert.equal(term_of(key), a:term())
      assert.is_nil(find(log, "lost"), table.concat(log, "\n"))
      assert.is_nil(find(log, "error"), table.concat(log, "\n"))
      local stats = a:stats()
      assert.truthy(stats.renewals >= 2, "renewals: " .. tostring(stats.renewals))
      a:stop(); s:close()
    end)

    -- renew_deadline may be any time below the ttl: renewing the session
    -- every ttl/2 (5 s) lost a renew_deadline of 1 s before every renewal
    it("renews the shared session often enough for the shortest renew_deadline on it", function()
      local s = assert(L.store(srv.url, { lock_delay = 0 }))
      local key = new_key()
      local log, record = recorder()
      -- a, with the default renew_deadline, makes the session and its schedule
      local a = candidate(s, key, "a", record)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      -- b rides on the same session: its renewals must come sooner
      local b = Rec.candidate(s, key .. "-short", "b", record, { ttl = 10, renew_deadline = 1 })
      b:run()
      assert.truthy(loop_until(function() return b:is_leader() end, 2), table.concat(log, "\n"))
      assert.equal(1, #srv:sessions())
      L.sleep(3) -- three of b's deadlines, six of its renew periods
      assert.is_true(b:is_leader(), table.concat(log, "\n"))
      assert.is_true(a:is_leader(), table.concat(log, "\n"))
      assert.equal(term_of(key .. "-short"), b:term())
      assert.equal(term_of(key), a:term())
      assert.is_nil(find(log, "lost"), table.concat(log, "\n"))
      assert.equal(2, Rec.count(log, "elected"), table.concat(log, "\n"))
      b:stop()
      -- alone on its store, a short renew_deadline from the session's start
      local s2 = assert(L.store(srv.url, { lock_delay = 0 }))
      local c = Rec.candidate(s2, key .. "-alone", "c", record, { ttl = 10, renew_deadline = 1 })
      c:run()
      assert.truthy(loop_until(function() return c:is_leader() end, 2), table.concat(log, "\n"))
      L.sleep(3)
      assert.is_true(c:is_leader(), table.concat(log, "\n"))
      assert.equal(term_of(key .. "-alone"), c:term())
      assert.is_nil(find(log, "^c lost"), table.concat(log, "\n"))
      assert.truthy(c:stats().renewals >= 4, "renewals: " .. tostring(c:stats().renewals))
      a:stop(); c:stop(); s:close(); s2:close()
    end)

    it("refuses a ttl under Consul's 10 s floor, bad options and credentials clearly", function()
      local s = assert(L.store(srv.url))
      local ok, err = pcall(L.candidate, s, new_key(), "a", { ttl = 5 })
      assert.is_false(ok)
      assert.matches("ttl 5 is out of range for the consul store %(10 to 86400", err)
      s:close()
      ok, err = pcall(L.store, srv.url .. "?lock_dely=0s")
      assert.is_false(ok)
      assert.matches("did you mean 'lock_delay'", err)
      local s2, err2 = L.store(srv.url, { behavior = "explode" })
      assert.is_nil(s2)
      assert.matches("'release' or 'delete'", err2)
      s2, err2 = L.store(srv.url, { lock_delay = 90 })
      assert.is_nil(s2)
      assert.matches("caps it at 60", err2)
      s2, err2 = L.store("consul://someone:pw@127.0.0.1:" .. srv.port)
      assert.is_nil(s2)
      assert.matches("ACL token", err2)
      assert.is_nil(err2:find("pw", 1, true))
    end)

    it("an unreachable agent: a clear error, retried by the retry policy", function()
      local dead = H.free_port()
      local s = assert(L.store("consul://127.0.0.1:" .. dead, { timeout = 1 }))
      local log, record = recorder()
      local a = candidate(s, new_key(), "a", record)
      local attempts = 0
      a.retry = function() attempts = attempts + 1; if attempts < 3 then return 0.05 end end
      a:run()
      assert.truthy(loop_until(function() return attempts >= 3 end, 5))
      local _, line = find(log, "^a error")
      assert.matches("consul 127.0.0.1:" .. dead .. ": creating a session failed", line)
      a:stop(); s:close()
    end)

    it("several agents: after a transport failure the next one is used", function()
      local url = ("consul://127.0.0.1:%d,127.0.0.1:%d"):format(H.free_port(), srv.port)
      local s = assert(L.store(url, { lock_delay = 0 }))
      local log, record = recorder()
      local a = candidate(s, new_key(), "a", record)
      a.retry = function() return 0.05 end
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 3), table.concat(log, "\n"))
      assert.truthy(find(log, "^a error .*creating a session failed"))
      a:stop(); s:close()
    end)

    it("tls options switch to https and reach libcurl (the double speaks plain HTTP)", function()
      -- no TLS-speaking Consul here: this shows the https scheme and the
      -- CA file are used, not a verified handshake
      local function first_error(options)
        local s = assert(L.store(srv.url, options))
        local log, record = recorder()
        local a = candidate(s, new_key(), "a", record)
        a.retry = function() end
        a:run()
        loop_until(function() return find(log, "^a error") end, 3)
        a:stop(); s:close()
        return select(2, find(log, "^a error")) or table.concat(log, "\n")
      end
      assert.matches("certificate file: /nonexistent/ca.pem", first_error({ tls = { ca = "/nonexistent/ca.pem" } }))
      assert.matches("SSL", first_error({ tls = true }))
    end)

    describe("with ACLs", function()
      local locked
      local token = "tok-" .. math.random(1e9)
      setup(function() locked = C.start({ acl_token = token }) end)
      teardown(function() if locked then locked:stop() end end)

      it("wrong or missing token: a clear error, the token never shown", function()
        for _, opts in ipairs({ { token = "wrong-" .. token }, {} }) do
          local s = assert(L.store(locked.url, opts))
          local log, record = recorder()
          local a = candidate(s, new_key(), "a", record)
          a.retry = function() end -- give up after the first error
          a:run()
          assert.truthy(loop_until(function() return find(log, "^a error") end, 2))
          local _, line = find(log, "^a error")
          assert.matches("permission denied %(HTTP 403", line)
          assert.matches("check the ACL token", line)
          assert.is_nil(line:find(token, 1, true))
          assert.is_false(a:is_leader())
          a:stop(); s:close()
        end
        assert.is_nil(locked:log():find(token, 1, true))
      end)

      it("the right token from the URL or the options: elected", function()
        for _, way in ipairs({ { locked.url .. "?token=" .. token }, { locked.url, { token = token } } }) do
          local s = assert(L.store(way[1], way[2]))
          -- a token on the URL is masked wherever the URL is shown
          assert.is_nil(tostring(s):find(token, 1, true))
          assert.is_nil(s:url():find(token, 1, true))
          local log, record = recorder()
          local a = candidate(s, new_key(), "a", record)
          a:run()
          assert.truthy(loop_until(function() return a:is_leader() end, 2), table.concat(log, "\n"))
          a:stop(); s:close()
        end
        L.run(2)
        assert.same({}, locked:sessions())
      end)
    end)
  end)

  -- The double expires a dead node's session after exactly ttl (Consul
  -- may take 2 x ttl), then the lock-delay holds the key: a kill -9 hands
  -- over after 2 x ttl + lock_delay + 1 s at most, and not before the
  -- lock-delay. Elsewhere lock_delay=0s; a paused leader is replaced once
  -- its session expires (ttl + 3 s) and on resume finds its deadline passed.
  local lock_delay = 1
  Cluster.describe_processes(_ENV, "consul", function(scenario)
    return srv.url .. "?lock_delay=" .. (scenario == "kill9" and lock_delay or 0) .. "s"
  end, { ttl = 10, elect = 5, sigterm = 0.5, rounds = 3, kill9 = 2 * 10 + lock_delay + 1,
         kill9_min = lock_delay, pause = 1.5, takeover = 13, lost = { "deadline" },
         sessions = function() return #srv:sessions() end })

  it("wrong token from CONSUL_HTTP_TOKEN: a clear error; the right one elects", function()
    local token = "tok-" .. math.random(1e9)
    local locked = C.start({ acl_token = token })
    local cluster = Cluster.start { store = locked.url, ttl = 10, nodes = 0 }
    finally(function()
      cluster:stop(3)
      locked:stop()
    end)
    local bad = cluster:add("bad", { CONSUL_HTTP_TOKEN = "nope" })
    assert.truthy(H.wait_until(function()
      return (H.read(bad.stdout) or ""):match("error [^\n]*permission denied")
    end, 5), H.read(bad.stdout))
    local out = H.read(bad.stdout) .. (H.read(bad.stderr) or "")
    assert.matches("check the ACL token", out)
    assert.is_nil(out:find("nope", 1, true))
    local good = cluster:add("good", { CONSUL_HTTP_TOKEN = token })
    assert.truthy(H.wait_until(function() return #cluster:elections("good") > 0 end, 5))
    assert.is_nil(((H.read(good.stdout) or "") .. (H.read(good.stderr) or "")):find(token, 1, true))
  end)
end)
