-- `leadership leader` and `leadership watch`, on every store available.
local L = require "leadership"
local O = require "ops"
local cjson = require "cjson"

-- Runs `leadership ARGS...`; returns stdout, stderr, exit status.
local function run(...)
  local dir = H.tmpdir("cli")
  local words = { H.bin }
  for _, a in ipairs({ ... }) do words[#words + 1] = H.quote(a) end
  local status = H.sh(("%s >%s/out 2>%s/err; echo $?"):format(table.concat(words, " "), dir, dir))
  local out, err = H.read(dir .. "/out"), H.read(dir .. "/err")
  os.execute("rm -rf " .. H.quote(dir))
  return out, err, tonumber(status)
end

-- A candidate process for node that leads until stopped (exec of sleep).
local function candidate(url, key, node, dir)
  return (O.spawn_status({ H.bin, "exec", "--store", url, "--key", key, "--node", node, "--ttl", "2", "--",
                           "sleep", "60" }, { dir = dir, name = node }))
end

local function watch_lines(proc)
  local lines = {}
  for line in (H.read(proc.stdout) or ""):gmatch("[^\n]+") do lines[#lines + 1] = line end
  return lines
end

describe("leadership leader/watch", function()
  local procs = {}
  local function track(p) procs[#procs + 1] = p; return p end
  after_each(function()
    for _, p in ipairs(procs) do if H.alive(p) then H.signal(p, "KILL") end end
    procs = {}
  end)

  it("leader: exit 3 with the last error when the store does not answer in time", function()
    local url = "redis://127.0.0.1:" .. H.free_port()
    local t0 = L.now()
    local out, err, status = run("leader", "--store", url, "--key", "k", "--timeout", "1")
    assert.equal(3, status, err)
    assert.equal("", out)
    assert.truthy(err:find("no answer from " .. url .. " within 1 s", 1, true), err)
    assert.is_true(L.now() - t0 < 4)
  end)

  it("refuses bad input with status 2 and a hint", function()
    local _, err, status = run("leader", "--store", "file:///tmp/x")
    assert.equal(2, status)
    assert.truthy(err:find("leader needs --key", 1, true), err)
    _, err, status = run("watch", "--store", "file:///tmp/x", "--key", "k", "--jsno")
    assert.equal(2, status)
    assert.truthy(err:find("did you mean '--json'", 1, true), err)
    _, err, status = run("watch", "--store", "file:///tmp/x", "--key", "k", "--json=yes")
    assert.equal(2, status)
    _, err, status = run("leader", "--store", "file:///tmp/x", "--key", "k", "--log-format", "yaml")
    assert.equal(2, status)
    assert.truthy(err:find("unknown log format 'yaml'", 1, true), err)
    _, err, status = run("leadre")
    assert.equal(2, status)
    assert.truthy(err:find("did you mean 'leader'", 1, true), err)
  end)

  it("logs one JSON object per line with --log-format json", function()
    local dir = H.tmpdir("cli")
    local _, err, status = run("exec", "--store", "file://" .. dir, "--key", "k", "--log-format", "json",
                               "--", "true")
    os.execute("rm -rf " .. H.quote(dir))
    assert.equal(0, status)
    assert.truthy(err:find('"msg":"elected"', 1, true), err)
    local n = 0
    for line in err:gmatch("[^\n]+") do
      local doc = cjson.decode(line)
      assert.truthy(doc.time and doc.level and doc.msg, line)
      n = n + 1
    end
    assert.truthy(n >= 2, err)
  end)

  local function report(name, why)
    describe("on " .. name, function()
      it("(skipped)", function() pending(why) end)
    end)
  end

  for _, backend in ipairs(O.stores(report)) do
    describe("on " .. backend.name, function()
      local store
      before_each(function() store = backend.start() end)
      after_each(function()
        for _, p in ipairs(procs) do if H.alive(p) then H.signal(p, "KILL") end end
        procs = {}
        if store then store.stop() end
      end)

      it("leader prints 'vacant' (exit 1), then 'NODE TERM' (exit 0) while one leads", function()
        local dir = H.tmpdir("leader")
        local key = "svc/leader/" .. math.random(1e9)
        local out, err, status = run("leader", "--store", store.url, "--key", key)
        assert.equal("vacant\n", out, err)
        assert.equal(1, status)
        local a = track(candidate(store.url, key, "A", dir))
        local seen = H.wait_until(function()
          local o, _, s = run("leader", "--store", store.url, "--key", key)
          if s == 0 then return o end
        end, 10, 0.1)
        assert.truthy(seen, H.read(a.stderr))
        local node, term = seen:match("^(%S+) (%d+)\n$")
        assert.equal("A", node)
        assert.truthy(tonumber(term) >= 1)
        H.signal(a, "TERM")
        assert.truthy(H.wait_until(function() return not H.alive(a) end, 5))
        out, _, status = run("leader", "--store", store.url, "--key", key)
        assert.equal("vacant\n", out)
        assert.equal(1, status)
        os.execute("rm -rf " .. H.quote(dir))
      end)

      it("watch prints a line per change, text and JSON, until SIGTERM/SIGINT", function()
        local dir = H.tmpdir("watch")
        local key = "svc/watch/" .. math.random(1e9)
        local w, w_status = O.spawn_status({ H.bin, "watch", "--store", store.url, "--key", key },
                                           { dir = dir, name = "watch" })
        local wj, wj_status = O.spawn_status({ H.bin, "watch", "--store", store.url, "--key", key, "--json" },
                                             { dir = dir, name = "watchjson" })
        track(w); track(wj)
        assert.truthy(H.wait_until(function() return #watch_lines(w) >= 1 and #watch_lines(wj) >= 1 end, 10),
          (H.read(w.stderr) or "") .. (H.read(wj.stderr) or ""))
        local a = track(candidate(store.url, key, "A", dir))
        assert.truthy(H.wait_until(function() return #watch_lines(w) >= 2 end, 10), H.read(a.stderr))
        H.signal(a, "TERM")
        assert.truthy(H.wait_until(function() return #watch_lines(w) >= 3 end, 10), H.read(a.stderr))
        local b = track(candidate(store.url, key, "B", dir))
        assert.truthy(H.wait_until(function() return #watch_lines(w) >= 4 and #watch_lines(wj) >= 4 end, 10),
          H.read(b.stderr))
        os.execute("sleep 0.2")
        H.signal(w, "TERM")
        H.signal(wj, "INT")
        assert.equal(0, O.wait_status(w_status, 5))
        assert.equal(0, O.wait_status(wj_status, 5))

        local lines = watch_lines(w)
        assert.equal(4, #lines, table.concat(lines, "\n"))
        local iso = "%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ"
        assert.truthy(lines[1]:match("^" .. iso .. " vacant$"), lines[1])
        local a_term = lines[2]:match("^" .. iso .. " A (%d+)$")
        assert.truthy(a_term, lines[2])
        assert.truthy(lines[3]:match("^" .. iso .. " vacant$"), lines[3])
        local b_term = lines[4]:match("^" .. iso .. " B (%d+)$")
        assert.truthy(b_term and tonumber(b_term) > tonumber(a_term), lines[4])

        local docs = {}
        for i, line in ipairs(watch_lines(wj)) do docs[i] = cjson.decode(line) end
        assert.equal(4, #docs)
        assert.equal(cjson.null, docs[1].leader)
        assert.equal(cjson.null, docs[1].term)
        assert.same({ "A", tonumber(a_term) }, { docs[2].leader, docs[2].term })
        assert.equal(cjson.null, docs[3].leader)
        assert.same({ "B", tonumber(b_term) }, { docs[4].leader, docs[4].term })
        assert.truthy(docs[2].time:match("^" .. iso .. "$"))
        os.execute("rm -rf " .. H.quote(dir))
      end)
    end)
  end
end)
