-- `leadership exec`: CMD only while leader, as a whole process group,
-- guarded by the watchdog when leadership is killed or paused.
local L = require "leadership"
local O = require "ops"

local TTL, GRACE = 2, 1

-- An exec process for node on url, running the spec command (ops.lua);
-- opts: ttl, grace, ignore_term, stderr (a path).
local function exec(dir, url, key, node, opts)
  opts = opts or {}
  local argv = { H.bin, "exec", "--store", url, "--key", key, "--node", node, "--ttl", tostring(opts.ttl or TTL),
                 "--grace", tostring(opts.grace or GRACE), "--log-level", "debug", "--", "sh", O.exec_script(dir) }
  local env = { DIR = dir, IGNORE_TERM = opts.ignore_term and "1" or nil }
  local proc, status = O.spawn_status(argv, { dir = dir, name = node, env = env, stderr = opts.stderr })
  proc.name = node
  return proc, status
end

local function logs(...)
  local parts = {}
  for _, p in ipairs({ ... }) do
    parts[#parts + 1] = ("--- %s (pid %d, %s)\n"):format(p.name, p.pid, H.alive(p) and "alive" or "gone") ..
      (H.read(p.stdout) or "") .. (H.read(p.stderr) or "")
  end
  return table.concat(parts, "\n")
end

local function kill_all(procs)
  for _, p in ipairs(procs) do
    if H.alive(p) then H.signal(p, "CONT"); H.signal(p, "KILL") end
  end
end

describe("leadership exec", function()
  local procs, dirs = {}, {}
  local function track(p) procs[#procs + 1] = p; return p end
  local function tmp() local d = H.tmpdir("exec"); dirs[#dirs + 1] = d; return d end
  -- kills every exec process; their watchdogs end the commands: waits for that
  local function cleanup()
    kill_all(procs)
    procs = {}
    for _, d in ipairs(dirs) do
      for name in H.sh("ls " .. H.quote(d)):gmatch("[^\n]+") do
        local node, term = name:match("^cmd%.(.+)%.(%d+)$")
        local pgid = node and O.command_of(d, node, tonumber(term))
        if pgid then H.wait_until(function() return #O.group(pgid) == 0 end, GRACE + 3) end
      end
      os.execute("rm -rf " .. H.quote(d))
    end
    dirs = {}
  end
  after_each(cleanup)

  it("runs CMD in a group of its own with LEADERSHIP_*; its exit status is ours; the key is released", function()
    local dir = tmp()
    local url = "file://" .. dir .. "/store"
    local argv = { H.bin, "exec", "--store", url, "--key", "svc/one", "--node", "n1", "--ttl", "2", "--",
                   "sh", "-c", 'echo "$LEADERSHIP_TERM $LEADERSHIP_KEY $LEADERSHIP_NODE $$ $(env -u LD_PRELOAD ps -o pgid= -p $$)"; exit 7' }
    local proc, status = O.spawn_status(argv, { dir = dir, name = "n1" })
    track(proc)
    local code = O.wait_status(status, 10)
    proc.name = "n1"
    assert.equal(7, code, logs(proc))
    local term, key, node, pid, pgid = (H.read(proc.stdout) or ""):match("^(%d+) (%S+) (%S+) (%d+)%s+(%d+)")
    assert.equal("1", term)
    assert.equal("svc/one", key)
    assert.equal("n1", node)
    assert.equal(pid, pgid) -- the leader of its own group
    assert.are_not.equal(tonumber(pgid), O.pgid_of(proc.shell.pid))
    -- released at once, not left to expire
    local out = H.sh(("%s leader --store %s --key svc/one; echo rc=$?"):format(H.bin, H.quote(url)))
    assert.equal("vacant\nrc=1\n", out)
  end)

  it("exits 127 when CMD cannot be run, releasing the key", function()
    local dir = tmp()
    local url = "file://" .. dir .. "/store"
    local proc, status = O.spawn_status({ H.bin, "exec", "--store", url, "--key", "k", "--", dir .. "/no-such-command" },
                                        { dir = dir })
    track(proc)
    assert.equal(127, O.wait_status(status, 10))
    assert.truthy((H.read(proc.stderr) or ""):find("cannot run", 1, true))
    assert.equal("vacant\n", H.sh(("%s leader --store %s --key k"):format(H.bin, H.quote(url))))
  end)

  it("refuses bad input with status 2", function()
    local cases = {
      { "exec", "--store", "file:///tmp/x", "--key", "k" },              -- no command
      { "exec", "--key", "k", "--", "true" },                             -- no store
      { "exec", "--store", "file:///tmp/x", "--key", "k", "--grace", "-1", "--", "true" },
      { "exec", "--store", "file:///tmp/x", "--key", "k", "--grace", "100000", "--", "true" }, -- over a day
      { "leader", "--store", "file:///tmp/x", "--key", "k", "--timeout", "1e300" },
      { "exec", "--store", "file:///tmp/x", "--key", "k", "--ttl", "0", "--", "true" },
      { "exec", "--store", "nope://x", "--key", "k", "--", "true" },
      { "exec", "--store", "file:///tmp/x", "--key", "k", "--grase", "1", "--", "true" },
    }
    for _, args in ipairs(cases) do
      local words = { H.bin }
      for _, a in ipairs(args) do words[#words + 1] = H.quote(a) end
      local out = H.sh(table.concat(words, " ") .. " 2>&1; echo rc=$?")
      assert.truthy(out:match("rc=2\n$"), table.concat(args, " ") .. " -> " .. out)
      assert.truthy(out:match("^leadership: "), out)
    end
    local out = H.sh(H.bin .. " exec --store file:///tmp/x --key k --grase 1 -- true 2>&1")
    assert.truthy(out:find("did you mean '--grace'", 1, true), out)
  end)

  -- SIGINT (a Ctrl-C) stops exec as SIGTERM does: the command gets SIGTERM
  for _, signal in ipairs({ "TERM", "INT" }) do
    it("on SIG" .. signal .. " ends the group with SIGTERM, releases once it is gone, exits 0; the next leader takes over", function()
      local dir = tmp()
      local url, key = "file://" .. dir .. "/store", "svc/" .. signal
      local a, a_status = exec(dir, url, key, "A")
      track(a)
      assert.truthy(H.wait_until(function() return O.command_of(dir, "A", 1) end, 10), logs(a))
      local b = track(exec(dir, url, key, "B"))
      os.execute("sleep 0.3")
      local t0 = L.time()
      H.signal(a, signal)
      assert.equal(0, O.wait_status(a_status, 5), logs(a, b))
      local term_at = tonumber(H.read(dir .. "/term.A.1") or "")
      assert.truthy(term_at and term_at >= t0, "A's command never saw SIGTERM\n" .. logs(a, b))
      local b_first = H.wait_until(function() return (O.stamp_span(dir, "B", 2)) end, 3)
      assert.truthy(b_first, logs(a, b))
      local _, a_last = O.stamp_span(dir, "A", 1)
      assert.truthy(a_last < b_first, ("A worked until %.3f, B began %.3f"):format(a_last, b_first))
      io.stderr:write(("\n[exec] SIG" .. signal .. ": A's command ended %.0f ms after the signal, B's began %.0f ms after it\n")
        :format((a_last - t0) * 1000, (b_first - t0) * 1000))
      assert.is_true(b_first - t0 < 1.5, ("handover took %.3f s"):format(b_first - t0))
    end)
  end

  it("puts the watchdog in a group of its own; if the watchdog dies, the command is ended and exec exits 70", function()
    local dir = tmp()
    local url, key = "file://" .. dir .. "/store", "svc/wd"
    local a, a_status = exec(dir, url, key, "A")
    track(a)
    local pgid = H.wait_until(function() return O.command_of(dir, "A", 1) end, 10)
    assert.truthy(pgid, logs(a))
    local watchdog
    for _, p in ipairs(O.processes()) do
      if p.ppid == a.pid and p.comm == "leadership-wd" then watchdog = p end
    end
    assert.truthy(watchdog, "no watchdog child of " .. a.pid)
    assert.equal(watchdog.pid, watchdog.pgid)
    assert.are_not.equal(pgid, watchdog.pgid)
    assert.are_not.equal(O.pgid_of(a.pid), watchdog.pgid)
    os.execute("kill -9 " .. watchdog.pid)
    assert.equal(70, O.wait_status(a_status, GRACE + 5), logs(a))
    assert.same({}, O.group(pgid))
    assert.truthy((H.read(a.stderr) or ""):find("watchdog", 1, true))
  end)

  -- What a finished command left behind was still ending when leadership
  -- was lost; its end was taken for an interrupted command's, and the
  -- finished one-shot job ran again in the next term.
  it("a command that finished is not run again when what it left outlives a loss", function()
    local dir = tmp()
    local argv = { H.bin, "exec", "--store", "file://" .. dir .. "/store", "--key", "k", "--ttl", tostring(TTL),
                   "--grace", "10", "--", "sh", "-c",
                   'echo "$LEADERSHIP_TERM" >> "$DIR/starts"; (trap "" TERM; exec sleep 20) & exit 5' }
    local a, a_status = O.spawn_status(argv, { dir = dir, name = "A", env = { DIR = dir } })
    a.name = "A"
    track(a)
    assert.truthy(H.wait_until(function() return H.read(dir .. "/starts") end, 5), logs(a))
    H.signal(a, "STOP")
    os.execute("sleep " .. (TTL + 0.5)) -- past the deadline: a loss when it resumes
    H.signal(a, "CONT")
    assert.equal(5, O.wait_status(a_status, 15), logs(a))
    assert.equal("1\n", H.read(dir .. "/starts"), logs(a))
  end)

  it("ignores SIGHUP (a unit's reload): leadership and the command go on", function()
    local dir = tmp()
    local a, a_status = exec(dir, "file://" .. dir .. "/store", "svc/hup", "A")
    track(a)
    assert.truthy(H.wait_until(function() return O.command_of(dir, "A", 1) end, 10), logs(a))
    H.signal(a, "HUP")
    os.execute("sleep 0.3")
    assert.is_true(H.alive(a), logs(a))
    local t = L.time()
    assert.truthy(H.wait_until(function() local _, last = O.stamp_span(dir, "A", 1); return last > t end, 2))
    assert.truthy((H.read(a.stderr) or ""):find("SIGHUP", 1, true), logs(a))
    H.signal(a, "TERM")
    assert.equal(0, O.wait_status(a_status, 5), logs(a))
  end)

  -- The watchdog's socket to leadership took descriptor 0 or 1 when those
  -- were closed, and /dev/null then replaced it: every exec exited 70.
  it("runs with stdin and stdout closed", function()
    local dir = tmp()
    local out = H.sh(("%s exec --store file://%s/store --key k -- true <&- >&- 2>%s/err; echo \"exit=$?\"")
      :format(H.quote(H.bin), dir, dir))
    assert.truthy(out:match("exit=0%s*$"), out .. (H.read(dir .. "/err") or ""))
  end)

  -- The watchdog logs to leadership's stderr. A log reader that stalls (a
  -- full pipe) once held it in that write, before its kill: the command
  -- of a paused leader ran on past the deadline.
  it("a stalled log pipe does not hold the watchdog: a paused leader's command is ended by the deadline", function()
    local dir = tmp()
    local url, key = "file://" .. dir .. "/store", "svc/stalled-log"
    local fifo = dir .. "/log"
    os.execute("mkfifo " .. H.quote(fifo))
    local reader = H.spawn({ "sh", "-c", 'exec sleep 60 <"$0"', fifo }) -- opens it, never reads
    finally(function() H.signal(reader, "KILL") end)
    local a = track(exec(dir, url, key, "A", { ignore_term = true, grace = 30, stderr = fifo }))
    local pgid = H.wait_until(function() return O.first_command(dir, "A") end, 10)
    assert.truthy(pgid, "A's command never started")
    -- fill the pipe through a descriptor of our own, until it would block
    os.execute(("dd if=/dev/zero of=/proc/%d/fd/2 bs=4096 count=64 oflag=nonblock 2>/dev/null"):format(a.pid))
    local t0 = L.time()
    H.signal(a, "STOP")
    local gone = H.wait_until(function() return #O.group(pgid) == 0 end, TTL + 2, 0.02)
    assert.truthy(gone, "A's command group alive " .. (L.time() - t0) .. " s after the pause: " ..
      table.concat(O.group(pgid), " "))
    local _, a_last = O.stamp_span(dir, "A")
    assert.truthy(a_last - t0 < TTL, "A's command ran on for " .. (a_last - t0))
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
        cleanup()
        if store then store.stop() end
      end)

      it("kill -9 of the leader: the other's command starts within ttl + 1 s; no process of the old group outlives the grace", function()
        local dir = tmp()
        local key = "svc/kill9/" .. math.random(1e9)
        local a = track(exec(dir, store.url, key, "A", { ignore_term = true }))
        local a_pgid = H.wait_until(function() return O.first_command(dir, "A") end, 10)
        assert.truthy(a_pgid, logs(a))
        local b = track(exec(dir, store.url, key, "B", { ignore_term = true }))
        os.execute("sleep 0.5")
        assert.truthy(#O.group(a_pgid) >= 2, "A's command and its grandchild run")
        local t0 = L.time()
        H.signal(a, "KILL")
        local b_first = H.wait_until(function()
          local first = O.stamp_span(dir, "B")
          return first
        end, TTL + 3, 0.02)
        assert.truthy(b_first, logs(a, b))
        local elapsed = b_first - t0
        io.stderr:write(("\n[exec %s] kill -9: next leader's command began after %.0f ms\n"):format(backend.name, elapsed * 1000))
        assert.is_true(elapsed <= TTL + 1, ("took %.3f s"):format(elapsed))
        -- the grandchild ignores SIGTERM: only the watchdog's SIGKILL ends it
        local gone = H.wait_until(function() return #O.group(a_pgid) == 0 end, GRACE + 0.5, 0.02)
        assert.truthy(gone, "alive in A's group after the grace: " .. table.concat(O.group(a_pgid), " "))
        local _, a_last = O.stamp_span(dir, "A")
        assert.truthy(a_last < b_first, ("A's command worked until %.3f, B's began %.3f"):format(a_last, b_first))
      end)

      if backend.name == "etcd" then
        it("a loss the store reports (key deleted) ends the group; the next term's command starts after it", function()
          local dir = tmp()
          local key = "svc/deleted/" .. math.random(1e9)
          local a = track(exec(dir, store.url, key, "A", { ignore_term = true }))
          local pgid = H.wait_until(function() return O.first_command(dir, "A") end, 10)
          assert.truthy(pgid, logs(a))
          local term = O.terms(dir, "A")[1]
          os.execute("sleep 0.3")
          store.server:ctl("del", "--prefix", key)
          assert.truthy(H.wait_until(function() return #O.terms(dir, "A") == 2 end, 5), logs(a))
          local terms = O.terms(dir, "A")
          assert.truthy(terms[2] > term)
          -- the old group (its grandchild ignores SIGTERM) was gone first
          assert.same({}, O.group(pgid))
          local _, old_last = O.stamp_span(dir, "A", term)
          local new_first = H.wait_until(function() return (O.stamp_span(dir, "A", terms[2])) end, 2)
          assert.truthy(new_first and old_last < new_first, logs(a))
          assert.truthy((H.read(a.stderr) or ""):find("reason=deleted", 1, true), logs(a))
        end)
      end

      it("SIGSTOP of the leader past its deadline: its command group is dead before the next leader's starts", function()
        local dir = tmp()
        local key = "svc/stop/" .. math.random(1e9)
        -- a grace longer than the ttl: the cap (half-way from the deadline
        -- to the lease's expiry) must decide when SIGKILL comes
        local a = track(exec(dir, store.url, key, "A", { ignore_term = true, grace = 30 }))
        local a_pgid = H.wait_until(function() return O.first_command(dir, "A") end, 10)
        assert.truthy(a_pgid, logs(a))
        local b = track(exec(dir, store.url, key, "B", { ignore_term = true, grace = 30 }))
        os.execute("sleep 0.5")
        local t0 = L.time()
        H.signal(a, "STOP")
        local group_dead_at
        local b_first = H.wait_until(function()
          if not group_dead_at and #O.group(a_pgid) == 0 then group_dead_at = L.time() end
          return (O.stamp_span(dir, "B"))
        end, TTL + 5, 0.02)
        assert.truthy(b_first, logs(a, b))
        assert.truthy(group_dead_at, "A's group still alive when B's command started: " ..
          table.concat(O.group(a_pgid), " "))
        local _, a_last = O.stamp_span(dir, "A")
        io.stderr:write(("\n[exec %s] SIGSTOP: A's command stopped %.0f ms after the pause, B's began after %.0f ms\n")
          :format(backend.name, (a_last - t0) * 1000, (b_first - t0) * 1000))
        assert.truthy(a_last < b_first, ("A's command worked until %.3f, B's began %.3f"):format(a_last, b_first))
        assert.truthy(a_last - t0 < TTL, "A's command ran on for " .. (a_last - t0))
        -- resumed, A steps down and starts nothing while B leads
        H.signal(a, "CONT")
        assert.truthy(H.wait_until(function() return (H.read(a.stderr) or ""):find("lost", 1, true) end, 3), logs(a))
        os.execute("sleep 0.5")
        assert.equal(1, #O.terms(dir, "A"), logs(a, b))
        -- B dies: A leads again and starts its command afresh, in a new term
        H.signal(b, "KILL")
        assert.truthy(H.wait_until(function() return #O.terms(dir, "A") == 2 end, TTL + 3), logs(a, b))
        local a_terms, b_terms = O.terms(dir, "A"), O.terms(dir, "B")
        assert.equal(1, #b_terms)
        assert.truthy(a_terms[1] < b_terms[1] and b_terms[1] < a_terms[2])
        local _, key_seen = O.command_of(dir, "A", a_terms[2])
        assert.equal(key, key_seen)
        -- each term is one node's, and terms never overlap
        local by_term, order = {}, {}
        for _, s in ipairs(O.stamps(dir)) do
          local iv = by_term[s.term]
          if not iv then
            iv = { node = s.node, first = s.t, last = s.t }
            by_term[s.term] = iv
            order[#order + 1] = s.term
          end
          assert.equal(iv.node, s.node)
          iv.last = s.t
        end
        table.sort(order)
        assert.truthy(H.wait_until(function()
          local n = 0
          for _ in pairs(by_term) do n = n + 1 end
          return n >= 2
        end, 1))
        for i = 2, #order do
          assert.truthy(by_term[order[i - 1]].last < by_term[order[i]].first,
            ("term %d ran until %.3f, term %d began %.3f"):format(order[i - 1], by_term[order[i - 1]].last,
              order[i], by_term[order[i]].first))
        end
      end)
    end)
  end
end)
