-- --metrics: /metrics (Prometheus text) and /healthz, in this process on
-- memory:// (scraped by a background curl while the loop runs) and from
-- `leadership run`/`exec` processes.
local L = require "leadership"
local O = require "ops"
local Rec = require "record"

local memory_store = Rec.memory_stores("metrics")

local function metrics_of(text, name, node, extra)
  return O.sample(text, name, 'node="' .. node .. '"' .. (extra or ""))
end

describe("metrics in process (memory://)", function()
  after_each(function()
    Rec.nothing_alive()
  end)

  it("serves is_leader, term, transitions, errors, renewals and a latency histogram per key and node", function()
    local s = memory_store()
    local a = L.candidate(s, "svc/m", "a", { ttl = 0.6 })
    local b = L.candidate(s, "svc/m", "b", { ttl = 0.6 })
    a:run(); b:run()
    local server = assert(L.metrics("127.0.0.1:0"))
    server:add(a, "a"):add(b, "b")
    local base = "http://" .. server:address()
    assert.truthy(server:address():match("^127%.0%.0%.1:%d+$"))
    L.sleep(0.5)
    local code, text = O.get_here(base .. "/metrics")
    assert.equal(200, code)
    assert.equal(1, metrics_of(text, "leadership_is_leader", "a"))
    assert.equal(0, metrics_of(text, "leadership_is_leader", "b"))
    assert.equal(1, metrics_of(text, "leadership_term", "a"))
    assert.equal(0, metrics_of(text, "leadership_term", "b"))
    assert.truthy(text:find('leadership_is_leader{key="svc/m",node="a"} 1', 1, true))
    assert.equal(1, metrics_of(text, "leadership_transitions_total", "a", ',event="elected"'))
    assert.equal(0, metrics_of(text, "leadership_transitions_total", "a", ',event="lost"'))
    assert.equal(0, metrics_of(text, "leadership_store_errors_total", "a"))
    local renewals = metrics_of(text, "leadership_renewals_total", "a")
    assert.truthy(renewals >= 1, text)
    assert.equal(renewals, metrics_of(text, "leadership_renewal_latency_seconds_count", "a"))
    assert.equal(renewals, metrics_of(text, "leadership_renewal_latency_seconds_bucket", "a", ',le="+Inf"'))
    -- cumulative buckets, in order, never falling
    local last = -1
    for le, value in text:gmatch('leadership_renewal_latency_seconds_bucket{key="svc/m",node="a",le="([^"]+)"} (%d+)') do
      assert.truthy(tonumber(value) >= last, le)
      last = tonumber(value)
    end
    local deadline_left = metrics_of(text, "leadership_deadline_seconds", "a")
    assert.truthy(deadline_left > 0 and deadline_left <= 0.4, tostring(deadline_left))
    for _, family in ipairs({ "leadership_is_leader gauge", "leadership_term gauge",
                              "leadership_transitions_total counter", "leadership_store_errors_total counter",
                              "leadership_renewals_total counter", "leadership_renewal_latency_seconds histogram" }) do
      assert.truthy(text:find("# TYPE " .. family .. "\n", 1, true), family)
    end
    -- a handover shows on the next scrape
    a:resign()
    L.sleep(0.1)
    code, text = O.get_here(base .. "/metrics")
    assert.equal(0, metrics_of(text, "leadership_is_leader", "a"))
    assert.equal(1, metrics_of(text, "leadership_is_leader", "b"))
    assert.equal(2, metrics_of(text, "leadership_term", "b"))
    assert.equal(1, metrics_of(text, "leadership_transitions_total", "a", ',event="lost"'))
    code = O.get_here(base .. "/nope")
    assert.equal(404, code)
    code = O.get_here(base .. "/metrics", "POST")
    assert.equal(405, code)
    server:close()
    server:close()
    a:stop(); b:stop()
  end)

  it("/healthz: 200 while healthy, 503 while renewals fail, back to 200 after", function()
    local s = memory_store()
    local a = L.candidate(s, "svc/h", "a", { ttl = 0.6 })
    a:run()
    local server = assert(L.metrics("127.0.0.1:0")):add(a, "a")
    local url = "http://" .. server:address() .. "/healthz"
    L.sleep(0.3)
    local code, body = O.get_here(url)
    assert.equal(200, code)
    assert.equal("ok\n", body)
    s:inject("renew_fail", true)
    L.sleep(0.3) -- a renewal (every ttl/3) has failed
    code, body = O.get_here(url)
    assert.equal(503, code)
    assert.truthy(body:find("key svc/h: store failing", 1, true), body)
    s:inject("renew_fail", false)
    local healthy
    for _ = 1, 20 do
      code = O.get_here(url)
      if code == 200 then healthy = true break end
      L.sleep(0.1)
    end
    assert.truthy(healthy)
    server:close()
    a:stop()
  end)

  it("/healthz: 503 when a leader's renewal is overdue, before its deadline passes", function()
    local s = memory_store()
    local a = L.candidate(s, "svc/o", "a", { ttl = 3 })
    local seen = {}
    a.on_lost = function(_, reason) seen[#seen + 1] = reason end
    a:run()
    local server = assert(L.metrics("127.0.0.1:0")):add(a, "a")
    local base = "http://" .. server:address()
    L.sleep(0.1)
    s:inject("renew_delay", 10) -- acknowledgements come far too late
    -- the last answer is at most ttl/3 old; overdue after ttl/2, deposed at 2/3 ttl
    local overdue_while_leader
    local t0 = L.now()
    while L.now() - t0 < 3 and not overdue_while_leader do
      local code, body = O.get_here(base .. "/healthz")
      local _, text = O.get_here(base .. "/metrics")
      if code == 503 and body:find("leader renewal overdue", 1, true) and
         metrics_of(text, "leadership_is_leader", "a") == 1 then
        overdue_while_leader = true
      end
      L.sleep(0.05)
    end
    assert.truthy(overdue_while_leader)
    s:inject("renew_delay", 0)
    server:close()
    a:stop()
  end)

  it("/healthz: 503 while an election waits to retry a failed store", function()
    local s = memory_store()
    local f = L.follower(s, "svc/f")
    f.retry = function() return 0.5 end
    s:inject("fail_next", 1)
    f:run()
    local server = assert(L.metrics("127.0.0.1:0")):add(f, "f")
    local url = "http://" .. server:address() .. "/healthz"
    local code, body = O.get_here(url)
    assert.equal(503, code)
    assert.truthy(body:find("store failing", 1, true), body)
    L.sleep(0.6)
    code = O.get_here(url)
    assert.equal(200, code)
    server:close()
    f:stop()
  end)

  it("refuses a bad address; reports a port in use", function()
    assert.has_error(function() L.metrics("localhost") end)
    assert.has_error(function() L.metrics("127.0.0.1:99999") end)
    local server = assert(L.metrics("127.0.0.1:0"))
    local again, err = L.metrics(server:address())
    assert.is_nil(again)
    assert.truthy(err:find("cannot listen on", 1, true), err)
    server:close()
  end)
end)

describe("--metrics on processes", function()
  local procs = {}
  local function track(p) procs[#procs + 1] = p; return p end
  after_each(function()
    for _, p in ipairs(procs) do if H.alive(p) then H.signal(p, "CONT"); H.signal(p, "KILL") end end
    procs = {}
  end)

  local function run_node(url, key, node, port, dir)
    return track(H.spawn({ H.bin, "run", "spec/support/stamp_policy.lua", "--store", url, "--key", key,
                           "--node", node, "--ttl", "2", "--metrics", "127.0.0.1:" .. port },
                         { dir = dir, stdout = dir .. "/" .. node .. ".out", stderr = dir .. "/" .. node .. ".err" }))
  end

  local function scrape(port)
    local code, text = O.get("http://127.0.0.1:" .. port .. "/metrics")
    if code == 200 then return text end
  end

  it("run: is_leader 1 on the leader and 0 elsewhere, as scraped by curl", function()
    local dir = H.tmpdir("metrics")
    local url, key = "file://" .. dir .. "/store", "svc/run"
    local ports = { H.free_port(), H.free_port() }
    run_node(url, key, "n1", ports[1], dir)
    os.execute("sleep 0.2")
    local n2 = run_node(url, key, "n2", ports[2], dir)
    local values = H.wait_until(function()
      local t1, t2 = scrape(ports[1]), scrape(ports[2])
      local v1 = t1 and metrics_of(t1, "leadership_is_leader", "n1")
      local v2 = t2 and metrics_of(t2, "leadership_is_leader", "n2")
      if v1 and v2 and v1 + v2 == 1 then return { v1, v2 } end
    end, 10, 0.1)
    assert.truthy(values, (H.read(dir .. "/n1.err") or "") .. (H.read(dir .. "/n2.err") or ""))
    assert.same({ 1, 0 }, values)
    assert.equal(200, (O.get("http://127.0.0.1:" .. ports[1] .. "/healthz")))
    assert.equal(200, (O.get("http://127.0.0.1:" .. ports[2] .. "/healthz")))
    -- the leader goes: the other one's metrics say so
    H.signal(procs[1], "TERM")
    assert.truthy(H.wait_until(function()
      local t2 = scrape(ports[2])
      return t2 and metrics_of(t2, "leadership_is_leader", "n2") == 1
    end, 5, 0.05))
    H.signal(n2, "TERM")
    assert.truthy(H.wait_until(function() return not H.alive(n2) and not H.alive(procs[1]) end, 5))
    os.execute("rm -rf " .. H.quote(dir))
  end)

  it("exec: serves metrics too; bad or busy addresses are refused with status 2", function()
    local dir = H.tmpdir("metrics")
    local url, key, port = "file://" .. dir .. "/store", "svc/exec", H.free_port()
    local x = track(H.spawn({ H.bin, "exec", "--store", url, "--key", key, "--node", "x", "--ttl", "2",
                    "--metrics", "127.0.0.1:" .. port, "--", "sleep", "30" }, { dir = dir }))
    local text = H.wait_until(function()
      local t = scrape(port)
      return t and metrics_of(t, "leadership_is_leader", "x") == 1 and t
    end, 10, 0.1)
    assert.truthy(text)
    local busy = H.sh(("%s exec --store %s --key other --metrics 127.0.0.1:%d -- true 2>&1; echo rc=$?")
      :format(H.bin, H.quote(url), port))
    assert.truthy(busy:find("cannot listen on 127.0.0.1:" .. port, 1, true), busy)
    assert.truthy(busy:match("rc=2\n$"), busy)
    local bad = H.sh(("%s run spec/support/stamp_policy.lua --store %s --metrics nowhere 2>&1; echo rc=$?")
      :format(H.bin, H.quote(url)))
    assert.truthy(bad:find("is not ADDR:PORT", 1, true), bad)
    assert.truthy(bad:match("rc=2\n$"), bad)
    H.signal(x, "TERM")
    assert.truthy(H.wait_until(function() return not H.alive(x) end, 5))
    os.execute("rm -rf " .. H.quote(dir))
  end)

  -- Stops and restarts the server behind a store from O.stores.
  local control = {
    redis = { stop = function(s) s.server:kill() end, start = function(s) s.server:launch() end },
    etcd = { stop = function(s) s.server:kill(1) end,
             start = function(s) s.server:launch(s.server.members[1]) end },
  }

  local function report(name, why)
    describe("on " .. name, function()
      it("(skipped)", function() pending(why) end)
    end)
  end

  for _, backend in ipairs(O.stores(report)) do
    if control[backend.name] then
      it("/healthz goes 503 when the " .. backend.name .. " server is stopped, 200 when it is back", function()
        local store = backend.start()
        local dir = H.tmpdir("metrics")
        local ok, err = pcall(function()
          local ports = { H.free_port(), H.free_port() }
          local key = "svc/health/" .. math.random(1e9)
          run_node(store.url, key, "n1", ports[1], dir)
          run_node(store.url, key, "n2", ports[2], dir)
          local function health(i) return (O.get("http://127.0.0.1:" .. ports[i] .. "/healthz")) end
          assert.truthy(H.wait_until(function() return health(1) == 200 and health(2) == 200 end, 15, 0.1),
            (H.read(dir .. "/n1.err") or "") .. (H.read(dir .. "/n2.err") or ""))
          local t0 = L.now()
          control[backend.name].stop(store)
          -- the leader (renewals fail) and the waiting candidate (its session
          -- is down too) both say so
          local down = H.wait_until(function() return health(1) == 503 and health(2) == 503 end, 10, 0.1)
          assert.truthy(down, ("still 200 with %s stopped: %s (n1 %s, n2 %s)"):format(backend.name,
            health(1) == 200 and "n1" or "n2", tostring(health(1)), tostring(health(2))))
          io.stderr:write(("\n[metrics %s] /healthz 503 on both nodes %.0f ms after the server stopped\n")
            :format(backend.name, (L.now() - t0) * 1000))
          control[backend.name].start(store)
          assert.truthy(H.wait_until(function() return health(1) == 200 and health(2) == 200 end, 20, 0.2),
            (H.read(dir .. "/n1.err") or "") .. (H.read(dir .. "/n2.err") or ""))
        end)
        for _, p in ipairs(procs) do if H.alive(p) then H.signal(p, "KILL") end end
        store.stop()
        os.execute("rm -rf " .. H.quote(dir))
        assert(ok, err)
      end)
    end
  end
end)
