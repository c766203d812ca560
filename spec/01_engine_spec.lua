-- The engine on memory://: every path driven deterministically with the
-- memory backend's fault hooks.
local L = require "leadership"
local Rec = require "record"

local new_store = Rec.memory_stores("engine")
local recorder = Rec.recorder

-- Elections made here are tracked: a failed spec's are stopped by the
-- check after it (Rec.nothing_alive) instead of failing every later one's.
local function new_candidate(...) return Rec.track(L.candidate(...)) end
local function new_follower(...) return Rec.track(L.follower(...)) end

local function candidate(store, name, record, options)
  return Rec.candidate(store, "svc/leader", name, record, options or { ttl = 1 })
end

local function index_of(list, item)
  for i, v in ipairs(list) do if v == item then return i end end
end

describe("engine on memory://", function()
  after_each(function()
    -- run the loop dry, collect, and expect nothing alive
    Rec.nothing_alive()
  end)

  it("elects one, reports leader changes, hands over on resign", function()
    local s = new_store()
    local log, record = recorder()
    local a = candidate(s, "a", record)
    local b = candidate(s, "b", record)
    a:run(); b:run()
    L.sleep(0.05)
    assert.is_true(a:is_leader())
    assert.is_false(b:is_leader())
    assert.equal(1, a:term())
    assert.is_nil(b:term())
    assert.equal("a", (b:leader()))
    a:resign()
    L.sleep(0.05)
    assert.is_true(b:is_leader())
    assert.equal(2, b:term())
    -- order: a's loss is reported before b's election
    local lost, elected = index_of(log, "a lost resign"), index_of(log, "b elected 2")
    assert.truthy(lost and elected and lost < elected, table.concat(log, "\n"))
    assert.truthy(index_of(log, "a elected 1") < index_of(log, "a sees a 1"))
    assert.truthy(index_of(log, "a sees b 2"))
    a:stop(); b:stop()
  end)

  it("stop is idempotent and releases at once", function()
    local s = new_store()
    local log, record = recorder()
    local a, b = candidate(s, "a", record), candidate(s, "b", record)
    a:run(); b:run()
    L.sleep(0.02)
    assert.is_true(a:stop())
    assert.is_true(a:stop())
    L.sleep(0.02)
    assert.is_true(b:is_leader())
    assert.equal(1, #(function() local t = {} for _, l in ipairs(log) do if l == "a lost stop" then t[#t + 1] = l end end return t end)())
    b:stop(); b:stop()
    assert.equal("stopped", b:state())
  end)

  it("reports vacancy to followers, and JSON values as tables", function()
    local s = new_store()
    local seen = {}
    local f = new_follower(s, "svc/leader")
    f.on_leader_change = function(_, leader, term) seen[#seen + 1] = { leader = leader, term = term } end
    f:run()
    local c = new_candidate(s, "svc/leader", { name = "underwood", addr = "10.0.0.5:80" }, { ttl = 1 })
    c:run()
    L.sleep(0.05)
    c:stop()
    L.sleep(0.05)
    assert.equal("underwood", seen[#seen - 1].leader.name)
    assert.equal("10.0.0.5:80", seen[#seen - 1].leader.addr)
    assert.equal(1, seen[#seen - 1].term)
    assert.is_nil(seen[#seen].leader)
    assert.is_nil(f:leader())
    f:stop()
  end)

  it("renews often enough to keep a renew_deadline below a third of the ttl", function()
    local s = new_store()
    local log, record = recorder()
    local a = candidate(s, "a", record, { ttl = 3, renew_deadline = 0.3 })
    a:run()
    L.sleep(1.5) -- five renew_deadlines
    assert.is_true(a:is_leader())
    assert.equal(1, a:term())
    assert.is_nil(Rec.find(log, "^a lost"), table.concat(log, "\n"))
    a:stop()
  end)

  it("steps down at the local deadline when renewals are slow", function()
    local s = new_store()
    local log, record = recorder()
    local a = candidate(s, "a", record, { ttl = 0.3 })
    a.retry = function() return 0.05 end
    a:run()
    L.sleep(0.05)
    assert.is_true(a:is_leader())
    local deadline = a:deadline()
    assert.truthy(deadline and deadline > L.now())
    s:inject("renew_delay", 1) -- acknowledgements arrive after the deadline
    local stepped = false
    local t0 = L.now()
    while L.now() - t0 < 1 and not stepped do
      L.sleep(0.01)
      stepped = index_of(log, "a lost deadline") ~= nil
    end
    assert.is_true(stepped, table.concat(log, "\n"))
    -- stepped down no later than renew_deadline (2/3 ttl) after the last ack
    assert.is_true(L.now() - t0 <= 0.3)
    s:inject("renew_delay", 0)
    L.sleep(0.3)
    assert.is_true(a:is_leader()) -- campaigned again and won
    a:stop()
  end)

  it("is_leader is false once the deadline has passed, even before the timer fires", function()
    local s = new_store()
    local a = new_candidate(s, "k", "a", { ttl = 0.3 })
    a:run()
    L.sleep(0.02)
    s:inject("renew_fail", true)
    assert.is_true(a:is_leader())
    os.execute("sleep 0.3") -- a pause: the loop does not run
    assert.is_false(a:is_leader())
    s:inject("renew_fail", false)
    a:stop()
  end)

  it("loses on a lost session and on a deleted key, then campaigns again", function()
    local s = new_store()
    local log, record = recorder()
    local a = candidate(s, "a", record)
    a:run()
    L.sleep(0.02)
    s:inject("lose_session")
    L.sleep(0.02)
    assert.truthy(index_of(log, "a lost session"))
    assert.is_true(a:is_leader())
    assert.equal(2, a:term())
    s:inject("delete_key", "svc/leader")
    L.sleep(0.02)
    assert.truthy(index_of(log, "a lost deleted"))
    assert.equal(3, a:term())
    a:stop()
  end)

  it("backs off with the retry function and gives up on nil", function()
    local s = new_store()
    local log, record = recorder()
    local attempts = {}
    local a = candidate(s, "a", record)
    a.retry = function(attempt, err)
      attempts[#attempts + 1] = { attempt, L.now() }
      if attempt < 3 then return 0.05 end
      return nil
    end
    s:inject("fail_next", 5)
    a:run()
    L.sleep(0.3)
    assert.equal(3, #attempts)
    assert.is_true(attempts[2][2] - attempts[1][2] >= 0.045)
    assert.equal("stopped", a:state())
    local errors = 0
    for _, l in ipairs(log) do if l:match("^a error") then errors = errors + 1 end end
    assert.equal(4, errors) -- three failures, then the final "gave up"
    assert.truthy(log[#log]:match("gave up after 3 attempts"))
  end)

  it("backoff: doubling sequence within jitter bounds, and attempts", function()
    local b = L.backoff { initial = 0.5, max = 4, factor = 2, jitter = 0.2, attempts = 6 }
    local expected = { 0.5, 1, 2, 4, 4, 4 }
    for attempt, base in ipairs(expected) do
      for _ = 1, 50 do
        local d = b(attempt, "err")
        assert.is_true(d >= base * 0.8 - 1e-9 and d <= base * 1.2 + 1e-9, ("attempt %d: %g"):format(attempt, d))
      end
    end
    assert.is_nil(b(7, "err"))
    assert.has_error(function() L.backoff { initial = -1 } end, "backoff 'initial' must be > 0")
    assert.has_error(function() L.backoff { intial = 1 } end, "unknown backoff field 'intial' (did you mean 'initial'?)")
    assert.has_error(function() L.backoff { jitter = 2 } end, "backoff 'jitter' must be in [0, 1)")
  end)

  it("a backoff object serves as retry", function()
    local s = new_store()
    local a = new_candidate(s, "k", "a")
    a.retry = L.backoff { initial = 0.02, max = 0.02, attempts = 2 }
    local errors = {}
    a.on_error = function(_, err) errors[#errors + 1] = err end
    s:inject("fail_next", 10)
    a:run()
    L.sleep(0.2)
    assert.equal("stopped", a:state())
    assert.truthy(errors[#errors]:match("gave up after 3 attempts"))
  end)

  it("passes a handler's error to on_error and goes on", function()
    local s = new_store()
    local errors = {}
    local a = new_candidate(s, "k", "a")
    a.on_elected = function() error("boom") end
    a.on_error = function(_, err) errors[#errors + 1] = err end
    a:run()
    L.sleep(0.05)
    assert.truthy(errors[1] and errors[1]:match("boom"))
    assert.is_true(a:is_leader())
    a:stop()
  end)

  it("handles non-string errors raised in handlers", function()
    local s = new_store()
    local errors = {}
    local a = new_candidate(s, "k", "a")
    a.on_elected = function() error({ code = 42 }) end
    a.on_error = function(_, err) errors[#errors + 1] = err end
    a:run()
    L.sleep(0.05)
    assert.equal("string", type(errors[1]))
    assert.truthy(errors[1]:match("^table:"))
    a:stop()
  end)

  -- Runs on_elected under a 50 ms budget with a ttl of 0.3 s: it is
  -- aborted, and renewals go on across more than a ttl.
  local function expect_aborted_while_renewing(on_elected)
    local s = new_store()
    local old_budget = L.handler_budget() -- it returns the budget in force
    L.handler_budget(0.05)
    local errors = {}
    local a = new_candidate(s, "k", "a", { ttl = 0.3 })
    a.on_elected = on_elected
    a.on_error = function(_, err) errors[#errors + 1] = err end
    a:run()
    L.sleep(0.5)
    L.handler_budget(old_budget)
    assert.truthy(errors[1] and errors[1]:match("budget"), tostring(errors[1]))
    assert.is_true(a:is_leader()) -- renewed across more than a ttl
    assert.is_true(a:stats().renewals >= 2)
    a:stop()
  end

  it("aborts a runaway handler (pcall cannot save it) while renewals go on", function()
    expect_aborted_while_renewing(function()
      while true do pcall(function() while true do end end) end
    end)
  end)

  -- A new coroutine inherits its creator's hook, so one made outside any
  -- handler has none: resumed by a handler, it is held to the handler's
  -- budget all the same.
  for _, how in ipairs({ "resume", "wrap" }) do
    it("aborts a runaway coroutine made outside any handler and run by one (" .. how .. ")", function()
      -- bounded, so that without the budget the spec fails, not hangs
      local function work() for _ = 1, 1e8 do end end
      local spin
      if how == "resume" then
        local co = coroutine.create(work)
        spin = function() return coroutine.resume(co) end
      else
        spin = coroutine.wrap(work)
      end
      expect_aborted_while_renewing(function()
        for _ = 1, 3 do pcall(spin) end
      end)
    end)
  end

  -- Resumed from elsewhere, a handler's coroutine would run leader code
  -- unchecked against the deadline, and could be closed while it ran.
  it("refuses to resume or close a handler's own coroutine from outside it", function()
    local s = new_store()
    local a = new_candidate(s, "k", "a")
    local co
    a.on_elected = function()
      co = coroutine.running()
      L.sleep(10)
    end
    a:run()
    L.sleep(0.05)
    assert.truthy(co)
    assert.same({ false, "cannot resume a handler's own coroutine: the runtime does" }, { coroutine.resume(co) })
    assert.has_error(function() coroutine.close(co) end, "cannot close a handler's own coroutine: the runtime does")
    a:stop()
    L.sleep(0.05)
    assert.same({ false, "cannot resume dead coroutine" }, { coroutine.resume(co) }) -- its task is over
  end)

  -- The engine's step-down once closed the lost term's to-be-closed
  -- variables in its own callback: a __close stopping and collecting the
  -- election freed it under the engine (a crash).
  it("closes on_elected's to-be-closed variables after the engine's step-down, safe to stop and collect", function()
    local s = new_store()
    local closed, live = false, nil
    do
      local a = new_candidate(s, "k", "a", { ttl = 0.3 })
      a.on_elected = function()
        local guard <close> = setmetatable({}, { __close = function()
          a:stop()
          a = nil
          collectgarbage()
          collectgarbage()
          closed, live = true, L.live().elections
        end })
        assert(s:inject("renew_fail", true)) -- the local deadline passes
        L.sleep(10)
      end
      a:run()
    end
    assert.truthy(Rec.loop_until(function() return closed end, 2))
    assert.equal(0, live)
  end)

  it("holds a value decoder to the handler budget: one that spins gives the raw value", function()
    -- init.lua sets the JSON decoder when it loads: loading it again puts it back
    finally(function() package.loaded["leadership"] = nil; require "leadership" end)
    local old_budget = L.handler_budget()
    finally(function() L.handler_budget(old_budget) end)
    L.handler_budget(0.05)
    L.set_value_decoder(function() while true do end end)
    local s = new_store()
    local a = new_candidate(s, "k", "a")
    local f = L.follower(s, "k")
    local seen
    f.on_leader_change = function(_, leader) seen = leader end
    a:run(); f:run()
    assert.truthy(Rec.loop_until(function() return seen end, 2))
    assert.equal("a", seen)
    a:stop(); f:stop()
  end)

  it("state() is not 'leader' past the local deadline, even before the loop runs", function()
    local s = new_store()
    local a = new_candidate(s, "k", "a", { ttl = 0.3 })
    a:run()
    L.sleep(0.05)
    assert.equal("leader", a:state())
    assert(s:inject("renew_fail", true))
    local deadline = a:deadline()
    while L.now() <= deadline do end -- a pause: no timer runs
    assert.are_not.equal("leader", a:state())
    a:stop()
  end)

  it("reports an error object whose __tostring raises, and the loop goes on", function()
    local s = new_store()
    local errors = {}
    local a = new_candidate(s, "k", "a")
    a.on_elected = function()
      error(setmetatable({}, { __tostring = function() error("no text") end }))
    end
    a.on_error = function(_, err) errors[#errors + 1] = err end
    a:run()
    L.sleep(0.05)
    assert.equal("(a table error object whose __tostring failed)", errors[1])
    assert.is_true(a:is_leader())
    a:stop()
  end)

  it("sleeps math.huge as long as leadership lasts (no timeval overflow)", function()
    local s = new_store()
    local a = new_candidate(s, "k", "a")
    local woke, closed = false, false
    a.on_elected = function()
      local guard <close> = setmetatable({}, { __close = function() closed = true end })
      L.sleep(math.huge)
      woke = true
    end
    a:run()
    L.sleep(0.1)
    assert.is_false(woke)
    a:stop()
    L.sleep(0.02)
    assert.is_false(woke)
    assert.is_true(closed)
  end)

  it("refuses store options nested too deep, or containing themselves, naming them", function()
    local deep = { tls = { a = { b = { c = { d = "x" } } } } }
    assert.has_error(function() L.store("memory://x", deep) end,
      "store option 'tls.a.b.c' nests tables deeper than 4 levels")
    local cyclic = {}
    cyclic.loop = cyclic
    local ok, err = pcall(L.store, "memory://x", cyclic)
    assert.is_false(ok)
    assert.truthy(err:match("store option 'loop%.loop%.loop%.loop' nests tables deeper than 4 levels"), err)
  end)

  it("leaves coroutine.resume, close and wrap working as before outside handlers", function()
    local co = coroutine.create(function(x)
      local y = coroutine.yield(x + 1)
      return y * 2
    end)
    assert.same({ true, 2 }, { coroutine.resume(co, 1) })
    assert.same({ true, 10 }, { coroutine.resume(co, 5) })
    assert.same({ false, "cannot resume dead coroutine" }, { coroutine.resume(co) })
    assert.has_error(function() coroutine.resume(42) end, "bad argument #1 to 'resume' (thread expected, got number)")
    local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
    local seen = {}
    for i in gen do seen[#seen + 1] = i end
    assert.same({ 1, 2, 3 }, seen)
    local boom = coroutine.wrap(function() error("boom") end)
    local ok, err = pcall(function() boom() end)
    assert.is_false(ok)
    -- where it was called, then where it was raised
    assert.truthy(err:match("^[^:]+_spec%.lua:%d+: [^:]+_spec%.lua:%d+: boom$"), err)
    local closed = false
    local suspended = coroutine.create(function()
      local guard <close> = setmetatable({}, { __close = function() closed = true end })
      coroutine.yield()
    end)
    coroutine.resume(suspended)
    assert.is_true(coroutine.close(suspended))
    assert.is_true(closed)
    local running = coroutine.running()
    ok, err = pcall(function() coroutine.close(running) end)
    assert.is_false(ok)
    assert.truthy(err:match("^[^:]+_spec%.lua:%d+: cannot close a %a+ coroutine$"), err)
  end)

  it("cancels on_elected on loss: never resumed, to-be-closed variables closed", function()
    local s = new_store()
    local closed, resumed_after_loss = false, false
    local lost = false
    local a = new_candidate(s, "k", "a")
    a.on_elected = function(_, term)
      if term > 1 then return end -- re-elected after the resign
      local guard <close> = setmetatable({}, { __close = function() closed = true end })
      while true do
        L.sleep(0.01)
        if lost then resumed_after_loss = true end
      end
    end
    a.on_lost = function() lost = true end
    a:run()
    L.sleep(0.05)
    a:resign()
    L.sleep(0.05)
    assert.is_true(closed)
    assert.is_false(resumed_after_loss)
    a:stop()
  end)

  it("accepts callable tables as handlers", function()
    local s = new_store()
    local called = {}
    local handler = setmetatable({}, { __call = function(_, c, term) called[#called + 1] = term end })
    local a = new_candidate(s, "k", "a")
    a.on_elected = handler
    a:run()
    L.sleep(0.02)
    assert.same({ 1 }, called)
    a:stop()
  end)

  it("sleep yields only its own handler", function()
    local s = new_store()
    local ticks = { a = 0, b = 0 }
    local function worker(name)
      return function() for _ = 1, 5 do ticks[name] = ticks[name] + 1; L.sleep(0.01) end end
    end
    local a = new_candidate(s, "ka", "a")
    local b = new_candidate(s, "kb", "b")
    a.on_elected, b.on_elected = worker("a"), worker("b")
    a:run(); b:run()
    L.sleep(0.02)
    assert.is_true(ticks.a >= 1 and ticks.b >= 1)
    L.sleep(0.1)
    assert.same({ a = 5, b = 5 }, ticks)
    a:stop(); b:stop()
  end)

  -- A timer armed late in a long callback once counted from when the loop
  -- woke, fired early, found the deadline not yet passed and was never armed
  -- again: the leader stayed one until something else woke the engine.
  it("steps down at the deadline when elected late in a long callback", function()
    local s = new_store()
    local c = new_candidate(s, "k", "c", { ttl = 0.6, renew_deadline = 0.2 })
    local lost_at
    c.on_lost = function(_, reason) lost_at = lost_at or { L.now(), reason } end
    c.retry = function() return 5 end
    local h = new_candidate(s, "helper", "h", { ttl = 5 })
    local elected
    h.on_elected = function()
      local t = L.now()
      while L.now() - t < 0.15 do end -- busy, within the handler budget
      s:inject("renew_fail", true)    -- no renewal is acknowledged from here
      c:run()
      elected = true
    end
    h:run()
    assert.truthy(Rec.loop_until(function() return elected end, 2))
    local deadline = assert(c:deadline())
    assert.truthy(Rec.loop_until(function() return c:state() ~= "leader" end, 1))
    assert.truthy(L.now() < deadline + 0.05, ("left %.3f s after its deadline"):format(L.now() - deadline))
    -- on_lost runs as a task, a loop turn after the state changed
    assert.truthy(Rec.loop_until(function() return lost_at end, 1))
    assert.equal("deadline", lost_at[2])
    c:stop(); h:stop()
    s:inject("renew_fail", false)
  end)

  -- Handlers made ready in one loop turn once ran in any order (equal
  -- timer expiries in libevent's heap).
  it("runs handlers in the order of the events: lost before the next elected", function()
    local s = new_store()
    local others = {}
    for i = 1, 4 do
      others[i] = new_candidate(s, "other" .. i, "o", { ttl = 1 })
      others[i].on_elected = function() end
      others[i].on_lost = function() end
      others[i]:run()
    end
    local log = {}
    local a = new_candidate(s, "k", "a", { ttl = 1 })
    a.on_elected = function(c, term)
      log[#log + 1] = "elected " .. term
      if term == 1 then
        for i = 1, 4 do others[i]:resign() end
        c:resign()
      end
    end
    a.on_lost = function(_, reason) log[#log + 1] = "lost " .. reason end
    a:run()
    assert.truthy(Rec.loop_until(function() return #log >= 3 end, 1))
    assert.same({ "elected 1", "lost resign", "elected 2" }, { log[1], log[2], log[3] })
    -- a follower's last report is the newest
    local seen = {}
    local f = new_follower(s, "k")
    f.on_leader_change = function(_, leader, term) seen[#seen + 1] = tostring(leader) .. " " .. tostring(term) end
    f:run()
    L.sleep(0.02)
    local h = new_candidate(s, "h", "h", { ttl = 1 })
    h.on_elected = function()
      for i = 1, 4 do others[i]:resign() end
      a:resign() -- alone: vacancy, then a again
    end
    h:run()
    L.sleep(0.05)
    assert.equal("a 3", seen[#seen], table.concat(seen, ", "))
    for i = 1, 4 do others[i]:stop() end
    a:stop(); f:stop(); h:stop()
  end)

  it("an election collected while its handler runs: the handler is cancelled, nothing freed is touched", function()
    local s = new_store()
    local finished = false
    local c = new_candidate(s, "k", "c", { ttl = 1 })
    c.on_lost = function()
      local t, u = L.now(), "x" -- reuse the registers that held self and the reason
      collectgarbage(); collectgarbage()
      L.sleep(0.01)
      collectgarbage(); collectgarbage()
      finished = t and u and true
    end
    c:run()
    assert.truthy(Rec.loop_until(function() return c:is_leader() end, 1))
    c:stop()
    c = nil
    collectgarbage(); collectgarbage()
    L.sleep(0.1)
    assert.is_false(finished) -- cancelled with its election
    assert.equal(0, L.live().tasks)
  end)

  it("a retry function that runs the election again leaves one campaign, not two", function()
    local s = new_store()
    local a = new_candidate(s, "k", "a", { ttl = 0.3 })
    local calls = 0
    a.retry = function()
      calls = calls + 1
      if calls == 1 then a:run() end
      return 0.01
    end
    s:inject("fail_next", 1)
    a:run()
    L.sleep(0.05)
    local b = new_candidate(s, "k", "b", { ttl = 0.3 })
    b:run()
    a:stop()
    assert.truthy(Rec.loop_until(function() return b:is_leader() end, 1), "a's key outlived its stop")
    b:stop()
  end)

  it("counts failures since the store last answered, not over the election's life", function()
    local s = new_store()
    local b = new_candidate(s, "k", "b", { ttl = 1 })
    b:run()
    L.sleep(0.02)
    local a = new_candidate(s, "k", "a", { ttl = 1 })
    local attempts = {}
    local backoff = L.backoff { initial = 0.01, max = 0.01, attempts = 1 }
    a.retry = function(attempt, err)
      attempts[#attempts + 1] = attempt
      return backoff(attempt, err)
    end
    s:inject("fail_next", 1)
    a:run() -- fails once, retried, then waits behind b: the store answered
    assert.truthy(Rec.loop_until(function() return a:leader() == "b" end, 1))
    s:inject("fail_next", 1)
    a:resign() -- one more failure, the first since that answer
    L.sleep(0.05)
    assert.same({ 1, 1 }, attempts)
    assert.equal("campaigning", a:state())
    a:stop(); b:stop()
  end)

  it("holds the retry function to the handler budget and names it when it fails", function()
    local s = new_store()
    local old = L.handler_budget()
    L.handler_budget(0.05)
    local function gave_up(retry)
      local a = new_candidate(s, "k", "a", { ttl = 1 })
      local errors = {}
      a.on_error = function(_, err) errors[#errors + 1] = err end
      a.retry = retry
      s:inject("fail_next", 1)
      local t0 = L.now()
      a:run()
      local blocked = L.now() - t0
      -- on_error runs as a task: wait for the last report, the give-up
      Rec.loop_until(function() return errors[#errors] and errors[#errors]:match("^gave up") end, 1)
      a:stop()
      return errors[#errors], blocked
    end
    local err, blocked = gave_up(function() while true do end end)
    assert.truthy(blocked < 0.2, ("the retry function held the loop %.3f s"):format(blocked))
    assert.truthy(err:match("^gave up after 1 attempt: .*%(retry function raised: .*budget"), err)
    err = gave_up(function(attempt) return attempt + {} end)
    assert.truthy(err:match("%(retry function raised: .*arithmetic"), err)
    err = gave_up(function() return -1 end)
    assert.truthy(err:match("%(retry function returned %-1, not seconds"), err)
    err = gave_up(function() return "soon" end)
    assert.truthy(err:match("%(retry function returned a string, not seconds or nil%)"), err)
    err = gave_up(function() return nil end)
    assert.truthy(err:match("^gave up after 1 attempt: ") and not err:match("retry function"), err)
    L.handler_budget(old)
  end)
end)

describe("bad input", function()
  after_each(function() collectgarbage(); collectgarbage() end)

  local function message(fn)
    local ok, err = pcall(fn)
    assert.is_false(ok)
    return tostring(err)
  end

  it("names a bad URL, an unknown backend or option", function()
    assert.truthy(message(function() L.store("etcd:/127.0.0.1") end):match("malformed store URL 'etcd:/127.0.0.1'"))
    assert.truthy(message(function() L.store("memroy://x") end)
      :match("unknown store backend 'memroy' in 'memroy://x' %(did you mean 'memory'%?%) %(known: memory, file"))
    assert.truthy(message(function() L.store("memory://x?colour=red") end):match("unknown option 'colour' for the memory store"))
    assert.truthy(message(function() L.store("redis://127.0.0.1:99999") end):match("bad port '99999' in store URL 'redis://127.0.0.1:99999'"))
    assert.truthy(message(function() L.store("memory://") end):match("needs a name"))
    assert.truthy(message(function() L.store("file://relative") end):match("needs an absolute directory"))
    assert.truthy(message(function() L.store("memory://x", { timeout = "soon" }) end):match("timeout"))
    -- as on the URL: math.huge made an undefined timer (no connection within infs)
    for _, timeout in ipairs({ math.huge, 1e300, 3601, 0 }) do
      assert.truthy(message(function() L.store("memory://x", { timeout = timeout }) end)
        :match("store option 'timeout' must be in %(0, 3600%] seconds"), tostring(timeout))
    end
    assert.truthy(message(function() L.store("memory://x?timeout=inf") end)
      :match("store option 'timeout' must be in %(0, 3600%] seconds"))
    -- credentials never appear in a message
    local bad_host = message(function() L.store("redis://user:secret@127.0.0.1:1:2") end)
    assert.truthy(bad_host:match("bad host '127.0.0.1:1' in store URL 'redis://user:%*%*%*@127.0.0.1:1:2'"), bad_host)
    assert.falsy(bad_host:match("secret"))
  end)

  it("names a bad key, ttl, option or handler", function()
    local s = assert(L.store("memory://bad"))
    assert.truthy(message(function() L.candidate(s, "", "a") end):match("key must not be empty"))
    assert.truthy(message(function() L.candidate(s, "k", "a", { ttl = 0 }) end):match("ttl 0 is out of range for the memory store %(0.01 to 86400 seconds%)"))
    assert.truthy(message(function() L.candidate(s, "k", "a", { ttl = -5 }) end):match("out of range"))
    assert.truthy(message(function() L.candidate(s, "k", "a", { ttl = "x" }) end):match("must be a number"))
    assert.truthy(message(function() L.candidate(s, "k", "a", { tll = 5 }) end):match("unknown election option 'tll' %(did you mean 'ttl'%?%)"))
    assert.truthy(message(function() L.candidate(s, "k", 42) end):match("string or table expected"))
    assert.truthy(message(function() L.candidate(s, "k", "\255\254") end):match("not UTF%-8"))
    local c = L.candidate(s, "k", "a")
    assert.truthy(message(function() c.on_elect = function() end end):match("unknown handler 'on_elect' %(did you mean 'on_elected'%?%)"))
    assert.truthy(message(function() c.on_elected = 5 end):match("on_elected must be a function"))
    assert.truthy(message(function() L.sleep(-1) end):match("sleep wants seconds"))
    c:stop()
    s:close()
  end)
end)
