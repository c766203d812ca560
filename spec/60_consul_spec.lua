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

    it("elects one, tells the others, term = LockIndex; resign hands over at once", function()
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
      assert.truthy(loop_until(function() return find(log, "^f sees a 1$") and find(log, "^b sees a 1$") end, 2))
      assert.equal(1, a:term())
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
      assert.equal(2, b:term())
      assert.equal(2, srv:entry(key).LockIndex)
      assert.truthy(loop_until(function() return find(log, "^a sees b 2$") and find(log, "^f sees b 2$") end, 1))
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
      assert.truthy(loop_until(function() return find(log, "^b sees a 1$") end, 2))
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
      a:stop()
      assert.truthy(loop_until(function() return b:is_leader() end, 2), table.concat(log, "\n"))
      assert.equal(2, b:term())
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
      local t0 = L.now()
      assert.equal(200, (srv:http("PUT", "/v1/session/destroy/" .. ids[1])))
      assert.truthy(loop_until(function() return find(log, "^a lost session$") end, 1))
      assert.truthy(L.now() - t0 < 0.5, "loss noticed after " .. (L.now() - t0) .. " s")
      -- the destroyed session's lock-delay (0.5 s) holds the key, then a wins again
      assert.truthy(loop_until(function() return a:is_leader() end, 3), table.concat(log, "\n"))
      assert.truthy(L.now() - t0 >= 0.5)
      assert.equal(2, a:term())
      local now = srv:sessions()
      assert.equal(1, #now)
      assert.are_not.equal(ids[1], now[1])
      a:stop(); s:close()
    end)

    it("the leader's key deleted behind its back: lost 'deleted', re-acquired", function()
      local s = assert(L.store(srv.url, { lock_delay = 0 }))
      local key = new_key()
      local log, record = recorder()
      local a = candidate(s, key, "a", record)
      a:run()
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
      srv:http("DELETE", "/v1/kv/" .. key)
      assert.truthy(loop_until(function() return find(log, "^a lost deleted$") end, 1))
      assert.truthy(loop_until(function() return a:is_leader() end, 2))
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
      assert.truthy(loop_until(function() return find(log, "^f sees a 1$") and b:is_leader() end, 2))
      -- a snapshot restore: every index drops, every blocking query returns
      assert.equal(200, (srv:http("PUT", "/v1/double/rewind?index=1")))
      L.sleep(0.2)
      -- the leader changes: a follower still blocking on the old, higher
      -- index would not hear of it for `wait` (20 s)
      a:stop()
      assert.truthy(loop_until(function() return find(log, "^f sees nil") end, 2), table.concat(log, "\n"))
      b:stop(); f:stop(); s:close()
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
      assert.equal(1, a:term())
      assert.is_nil(find(log, "lost"), table.concat(log, "\n"))
      assert.is_nil(find(log, "error"), table.concat(log, "\n"))
      local stats = a:stats()
      assert.truthy(stats.renewals >= 2, "renewals: " .. tostring(stats.renewals))
      a:stop(); s:close()
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

  describe("`leadership run` processes", function()
    local procs, stamp_dir

    before_each(function()
      procs = {}
      stamp_dir = H.tmpdir("consul-stamps")
    end)

    after_each(function()
      for _, p in ipairs(procs) do
        H.signal(p, "CONT")
        H.stop(p, 3)
      end
      os.execute("rm -rf " .. H.quote(stamp_dir))
    end)

    local function start_node(name, key, url, env)
      env = env or {}
      env.STAMP_FILE = stamp_dir .. "/stamps"
      local p = H.spawn({ H.bin, "run", "spec/support/stamp_policy.lua", "--store", url,
                          "--key", key, "--node", name, "--ttl", "10" }, { env = env })
      p.name = name
      procs[#procs + 1] = p
      return p
    end

    local function elections(p)
      local out = {}
      for term, t in (H.read(p.stdout) or ""):gmatch("elected (%d+) ([%d.]+)") do
        out[#out + 1] = { term = tonumber(term), time = tonumber(t), node = p.name }
      end
      return out
    end

    local function leaders()
      local out = {}
      for _, p in ipairs(procs) do
        local e = elections(p)
        if #e > 0 then out[#out + 1] = { proc = p, last = e[#e] } end
      end
      return out
    end

    local function current_leader()
      local best
      for _, p in ipairs(procs) do
        local out = H.read(p.stdout) or ""
        local last_elected = out:match(".*elected (%d+) [%d.]+")
        local tail = last_elected and out:match(".*elected %d+ [%d.]+(.*)$") or ""
        if last_elected and not tail:match("lost") and H.alive(p) then
          if best then return nil, "two leaders: " .. best.name .. " and " .. p.name end
          best = p
        end
      end
      return best
    end

    -- Every work stamp, by time: a term belongs to one node and terms
    -- never go down, so no two leaders ever worked at once.
    local function check_stamps()
      local stamps = {}
      for t, node, term in (H.read(stamp_dir .. "/stamps") or ""):gmatch("([%d.]+) (%S+) (%d+)\n") do
        stamps[#stamps + 1] = { time = tonumber(t), node = node, term = tonumber(term) }
      end
      table.sort(stamps, function(x, y) return x.time < y.time end)
      local owner, top = {}, 0
      for _, s in ipairs(stamps) do
        assert(owner[s.term] == nil or owner[s.term] == s.node,
               ("term %d stamped by %s and %s"):format(s.term, tostring(owner[s.term]), s.node))
        owner[s.term] = s.node
        assert(s.term >= top, ("%s worked with term %d at %.3f after term %d had started"):format(
          s.node, s.term, s.time, top))
        top = s.term
      end
      return stamps
    end

    it("three processes: exactly one leader, the others wait", function()
      local key = new_key()
      for _, n in ipairs({ "n1", "n2", "n3" }) do start_node(n, key, srv.url .. "?lock_delay=0s") end
      assert.truthy(H.wait_until(function() return #leaders() >= 1 end, 5))
      os.execute("sleep 1.5")
      local ls = leaders()
      assert.equal(1, #ls)
      assert.equal(1, ls[1].last.term)
      assert.truthy(current_leader())
      assert.truthy(#check_stamps() > 50)
      assert.equal(3, #srv:sessions())
      for _, p in ipairs(procs) do assert.is_true(H.alive(p)) end
    end)

    it("SIGTERM hands over at once and destroys the session; terms strictly rise", function()
      local key = new_key()
      local url = srv.url .. "?lock_delay=0s"
      for _, n in ipairs({ "n1", "n2", "n3" }) do start_node(n, key, url) end
      local handovers = {}
      for round = 1, 3 do
        local leader = H.wait_until(function() return current_leader() end, 5)
        assert.truthy(leader, "no leader in round " .. round)
        os.execute("sleep 0.3")
        local sessions = #srv:sessions()
        local t0 = L.time()
        H.signal(leader, "TERM")
        local successor = H.wait_until(function()
          local c = current_leader()
          return c ~= leader and c
        end, 5)
        assert.truthy(successor, "no successor in round " .. round)
        local e = elections(successor)
        handovers[round] = e[#e].time - t0
        assert.truthy(H.wait_until(function() return not H.alive(leader) end, 3))
        assert.equal(sessions - 1, #srv:sessions())
        start_node(leader.name .. "." .. round, key, url)
      end
      local shown = {}
      for i, h in ipairs(handovers) do shown[i] = ("%.3f"):format(h) end
      io.stderr:write(("\n[consul] SIGTERM handover (ttl 10 s): %s s\n"):format(table.concat(shown, ", ")))
      for _, h in ipairs(handovers) do assert.truthy(h < 0.5, "handover took " .. h .. " s") end
      local all = {}
      for _, p in ipairs(procs) do for _, e in ipairs(elections(p)) do all[#all + 1] = e end end
      table.sort(all, function(x, y) return x.time < y.time end)
      assert.equal(4, #all)
      for i = 2, #all do assert.truthy(all[i].term > all[i - 1].term) end
      check_stamps()
    end)

    it("kill -9 of the leader: handover within 2 x ttl + lock_delay + 1 s", function()
      local key = new_key()
      local ttl, lock_delay = 10, 1
      local url = srv.url .. "?lock_delay=" .. lock_delay .. "s"
      for _, n in ipairs({ "n1", "n2", "n3" }) do start_node(n, key, url) end
      local leader = H.wait_until(function() return current_leader() end, 5)
      assert.truthy(leader)
      os.execute("sleep 0.5")
      local t0 = L.time()
      H.signal(leader, "KILL")
      local successor = H.wait_until(function()
        local c = current_leader()
        return c ~= leader and H.alive(c or leader) and c
      end, 2 * ttl + lock_delay + 2)
      assert.truthy(successor)
      local e = elections(successor)
      local handover = e[#e].time - t0
      io.stderr:write(("\n[consul] kill -9 handover (ttl %g s, lock_delay %g s): %.3f s\n"):format(
        ttl, lock_delay, handover))
      -- the double expires the session after ttl, then the lock-delay runs
      assert.truthy(handover >= lock_delay, "handover took only " .. handover .. " s")
      assert.truthy(handover <= 2 * ttl + lock_delay + 1, "handover took " .. handover .. " s")
      assert.equal(2, e[#e].term)
      check_stamps()
    end)

    it("SIGSTOP past the deadline: the old leader never works again after the new one starts", function()
      local key = new_key()
      local url = srv.url .. "?lock_delay=0s"
      for _, n in ipairs({ "n1", "n2" }) do start_node(n, key, url) end
      local leader = H.wait_until(function() return current_leader() end, 5)
      assert.truthy(leader)
      os.execute("sleep 0.5")
      H.signal(leader, "STOP")
      local other = procs[1] == leader and procs[2] or procs[1]
      -- the session expires after ttl (10 s) without renewals
      assert.truthy(H.wait_until(function() return #elections(other) > 0 end, 13))
      os.execute("sleep 0.5")
      H.signal(leader, "CONT")
      assert.truthy(H.wait_until(function()
        return (H.read(leader.stdout) or ""):match("lost deadline")
      end, 3), H.read(leader.stdout))
      os.execute("sleep 0.5")
      local stamps = check_stamps()
      local e = elections(other)
      local new_start = e[#e].time
      for _, s in ipairs(stamps) do
        if s.node == leader.name then
          assert.truthy(s.time < new_start, ("%s stamped at %.3f, after %s began at %.3f"):format(
            s.node, s.time, other.name, new_start))
        end
      end
      assert.equal(2, e[#e].term)
    end)

    it("wrong token from CONSUL_HTTP_TOKEN: a clear error; the right one elects", function()
      local token = "tok-" .. math.random(1e9)
      local locked = C.start({ acl_token = token })
      local ok, err = pcall(function()
        local key = new_key()
        local bad = start_node("bad", key, locked.url, { CONSUL_HTTP_TOKEN = "nope" })
        assert.truthy(H.wait_until(function()
          return (H.read(bad.stdout) or ""):match("error [^\n]*permission denied")
        end, 5), H.read(bad.stdout))
        local out = H.read(bad.stdout) .. (H.read(bad.stderr) or "")
        assert.matches("check the ACL token", out)
        assert.is_nil(out:find("nope", 1, true))
        local good = start_node("good", key, locked.url, { CONSUL_HTTP_TOKEN = token })
        assert.truthy(H.wait_until(function() return #elections(good) > 0 end, 5))
        assert.is_nil(((H.read(good.stdout) or "") .. (H.read(good.stderr) or "")):find(token, 1, true))
      end)
      for _, p in ipairs(procs) do H.stop(p, 3) end
      locked:stop()
      assert(ok, err)
    end)
  end)
end)
