-- The Redis backend's edges, against a real redis-server on 127.0.0.1:
-- option limits, and what one process does with its own leases when the
-- server turns a request down.
local L = require "leadership"
local R = require "redis"
local Rec = require "record"
local Dns = require "silent_dns"

local have = H.have("redis-server", pending) and H.have("redis-cli", pending)

local new_key = Rec.keys("redis-review")
local recorder, find, count, loop_until = Rec.recorder, Rec.find, Rec.count, Rec.loop_until

local function listening(port)
  return H.sh(("ss -Htln '( sport = :%d )'"):format(port)) ~= ""
end

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

  describe("with garbage from the server", function()
    local have_python = H.have("python3", pending)

    -- spec/support/redis_garbage.py in `mode` before srv on a free port,
    -- injecting after the reply to the nth EVALSHA (command modes); it dies
    -- with the spec. Returns its URL and said(): what it printed so far.
    local function garbage_redis(mode, nth)
      local port = H.free_port()
      local proc = H.spawn({ "python3", "spec/support/redis_garbage.py", tostring(port), mode,
                             tostring(srv.port), tostring(nth or 1) })
      finally(function() H.signal(proc, "KILL") end)
      assert.truthy(H.wait_until(function() return listening(port) or not H.alive(proc) end, 5) and H.alive(proc),
                    "redis_garbage.py did not start")
      return "redis://127.0.0.1:" .. port, function() return H.read(proc.stdout) or "" end
    end

    -- The proxy's "closed by the client" for its connection n: we dropped it.
    local function dropped_by_us(said, n, kind)
      return said():find(("connection %d (%s) closed by the client"):format(n, kind), 1, true)
    end

    -- mode, and what a's on_error says of it (plain text)
    local on_commands = {
      { "unasked", "garbage from the server: a reply nobody asked for (status)" },
      { "hugearray", "garbage from the server: a reply of more than 4096 elements (an array of 299999999 in it)" },
      { "hugebulk", "garbage from the server: a reply over 16 MB" },
      { "protocol", 'garbage from the server: Protocol error, got "!" as reply type byte' },
      { "longline", "garbage from the server: a line over 64 KB" },
    }
    for _, case in ipairs(on_commands) do
      local mode, says = case[1], case[2]
      it("'" .. mode .. "' on the command connection: dropped as lost, said, and the leader keeps its term", function()
        if not have_python then return end
        -- the second EVALSHA is a's first renewal: the garbage finds a leader
        local url, said = garbage_redis(mode, 2)
        local s = keep(assert(L.store(url, { timeout = 1 })))
        local log, record = recorder()
        local a = keep(Rec.candidate(s, new_key(), "a", record, { ttl = 1.5 }))
        a.on_renewed = function() record("a renewed") end
        a:run()
        assert.truthy(loop_until(function() return find(log, "^a error") end, 5),
                      table.concat(log, "\n") .. "\n" .. said())
        -- here, so the process lives (hiredis would abort or allocate 2.4 GB)
        local at, line = find(log, "^a error")
        assert.truthy(line:find(says, 1, true), line)
        assert.truthy((find(log, "^a elected 1$") or math.huge) < at, table.concat(log, "\n"))
        local n = tonumber(said():match("injected " .. mode .. " on connection (%d+) %(commands%)"))
        assert.truthy(n, said())
        assert.truthy(loop_until(function() return dropped_by_us(said, n, "commands") end, 2), said())
        -- renewed on a new connection: the lease was kept, with its term
        assert.truthy(loop_until(function() return find(log, "^a renewed", at + 1) end, 3),
                      table.concat(log, "\n") .. "\n" .. said())
        assert.is_true(a:is_leader(), table.concat(log, "\n"))
        assert.equal(1, a:term())
        assert.equal(1, count(log, "^a elected"), table.concat(log, "\n"))
        assert.equal(0, count(log, "^a lost"), table.concat(log, "\n"))
        assert.equal(1, count(log, "^a error"), table.concat(log, "\n"))
        a:stop(); s:close()
        L.run(3) -- the clean-up, while the proxy still runs
      end)
    end

    it("a NOSCRIPT that came slowly: the EVAL sent again has a timeout of its own", function()
      if not have_python then return end
      -- a's first renewal: NOSCRIPT after 0.7 s, the EVAL's reply 0.5 s
      -- later; timed from the EVALSHA, the EVAL ran out at 1 s, and the
      -- connection was dropped under a reply on its way
      local url, said = garbage_redis("slownoscript", 2)
      local s = keep(assert(L.store(url, { timeout = 1 })))
      local log, record = recorder()
      local a = keep(Rec.candidate(s, new_key(), "a", record, { ttl = 6 }))
      a.on_renewed = function() record("a renewed") end
      a:run()
      assert.truthy(loop_until(function() return said():find("injected slownoscript", 1, true) end, 5), said())
      local from = #log + 1
      assert.truthy(loop_until(function() return find(log, "^a renewed", from) end, 4),
                    table.concat(log, "\n") .. "\n" .. said())
      assert.equal(0, count(log, "^a error"), table.concat(log, "\n"))
      assert.is_true(a:is_leader())
      assert.equal(1, a:term())
      a:stop(); s:close()
      L.run(3) -- the clean-up, while the proxy still runs
    end)

    -- The pub/sub connection's loss is not reported (the command connection
    -- carries the reports): it is dropped and subscribed again, quietly.
    for _, mode in ipairs({ "shortpush", "otherchannel" }) do
      it("'" .. mode .. "' on the pub/sub connection: dropped and subscribed again; the leader stays", function()
        if not have_python then return end
        local url, said = garbage_redis(mode)
        local s, direct = keep(assert(L.store(url, { timeout = 1 }))), keep(assert(L.store(srv.url)))
        local key = new_key()
        local log, record = recorder()
        local a = keep(Rec.candidate(s, key, "a", record, { ttl = 1.5 }))
        local b = keep(Rec.candidate(direct, key, "b", record, { ttl = 1.5 }))
        a:run()
        assert.truthy(loop_until(function() return a:is_leader() end, 3), table.concat(log, "\n"))
        b:run()
        -- injected; that connection dropped by us; a later one subscribed
        assert.truthy(loop_until(function()
          local n = tonumber(said():match("injected " .. mode .. " on connection (%d+) %(pubsub%)"))
          if not n or not dropped_by_us(said, n, "pubsub") then return false end
          for m in said():gmatch("connection (%d+) subscribed") do
            if tonumber(m) > n then return true end
          end
          return false
        end, 5), said())
        -- here, so the process lives; a led throughout, and b sees it
        local t_end = L.now() + 1.5
        while L.now() < t_end do
          assert.is_true(a:is_leader(), table.concat(log, "\n"))
          L.sleep(0.05)
        end
        assert.equal(1, a:term())
        assert.truthy(find(log, "^b sees a 1$"), table.concat(log, "\n"))
        assert.equal(1, count(log, "^a elected"), table.concat(log, "\n"))
        assert.equal(0, count(log, "^a lost"), table.concat(log, "\n"))
        assert.equal(0, count(log, "^a error"), table.concat(log, "\n"))
        b:stop(); a:stop(); s:close(); direct:close()
        L.run(3) -- the clean-up, while the proxy still runs
      end)
    end
  end)
  -- A name the server is known by, looked up by a candidate in a mount
  -- namespace whose name server never answers (spec/support/silent_dns.lua).
  describe("named by a host name", function()
    local function unavailable()
      local why_not = Dns.unavailable()
      if not why_not then return false end
      if os.getenv("CI") then error(why_not) end
      pending(why_not)
      return true
    end

    it("a reconnect waiting on a DNS server that never answers does not hold up the deadline", function()
      if unavailable() then return end
      -- hiredis's own getaddrinfo blocked the loop for the resolver's
      -- 3 s timeout: the deadline passed unseen, and on_lost came late
      local dns = Dns.start("127.0.0.1 localhost\n127.0.0.1 redis-dns-spec\n")
      local server = R.start()
      finally(function() dns:stop(); server:stop() end)
      local _, said = dns:candidate("redis://redis-dns-spec:" .. server.port, new_key(), 8)
      assert.truthy(H.wait_until(function() return said():find("elected 1") end, 5), said())
      -- the name now resolves only by DNS; the server goes away
      dns:set_hosts("127.0.0.1 localhost\n")
      server:kill()
      assert.truthy(H.wait_until(function() return said():find(" lost ") end, 8), said())
      local last_held, lost_at
      for at, what in said():gmatch("([%d.]+) (%a+)") do
        if what == "elected" or what == "renewed" then last_held = tonumber(at) end
        if what == "lost" then lost_at = tonumber(at); break end
      end
      -- the deadline is 2/3 of the ttl after the last renewal was sent
      assert.truthy(lost_at - last_held <= 1.0 + 0.5, said())
    end)
  end)
end)
