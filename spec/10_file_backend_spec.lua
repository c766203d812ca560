-- The file:// backend driven through the Lua module in one process: two
-- stores on one directory are two holders. Holders in other processes
-- (alive, hung or killed) are played by `sh`/`flock` children holding a
-- holder file's lock, with records written by hand.
local L = require "leadership"
local cjson = require "cjson"
local Rec = require "record"

local KEY = "svc/leader"
local KEY_FILE = "svc%2Fleader"

local BOOT_ID = (H.read("/proc/sys/kernel/random/boot_id") or ""):gsub("%s+$", "")

local function wait_for(fn, timeout) return Rec.loop_until(fn, timeout, 0.005) end

-- Handler calls, each { at = L.now(), what = "elected", ... }.
local made = {} -- every candidate and follower, stopped after each spec

local function candidate(store, name, key, options)
  local events = {}
  local function record(what, a, b)
    events[#events + 1] = { at = L.now(), what = what, a = a, b = b }
  end
  local c = L.candidate(store, key or KEY, name, options or { ttl = 1 })
  c.on_elected = function(_, term) record("elected", term) end
  c.on_lost = function(_, reason) record("lost", reason) end
  c.on_leader_change = function(_, leader, term) record("leader", leader, term) end
  c.on_error = function(_, err) record("error", tostring(err)) end
  made[#made + 1] = c
  return c, events
end

local function find(events, what, a)
  for _, ev in ipairs(events) do
    if ev.what == what and (a == nil or ev.a == a) then return ev end
  end
end

local function count(events, what)
  local n = 0
  for _, ev in ipairs(events) do if ev.what == what then n = n + 1 end end
  return n
end

local function dump(events)
  local lines = {}
  for _, ev in ipairs(events) do
    lines[#lines + 1] = ("%.3f %s %s %s"):format(ev.at, ev.what, tostring(ev.a), tostring(ev.b))
  end
  return table.concat(lines, "\n")
end

local function list(dir)
  local names = {}
  for name in H.sh("ls -A " .. H.quote(dir) .. " 2>/dev/null"):gmatch("[^\n]+") do
    names[#names + 1] = name
  end
  table.sort(names)
  return names
end

-- Replaces a file the way the backend does: temp file + rename.
local function replace(path, text)
  H.write(path .. ".spec-tmp", text)
  assert(os.rename(path .. ".spec-tmp", path))
end

-- A lease record by hand. Integers are formatted here: lua-cjson would
-- print a large nanosecond count in exponent form.
local function record_text(holder, term, value, expiry_ns, boot)
  return ('{"holder":%s,"term":%d,"value":%s,"expiry":%d,"boot":%s}'):format(
    cjson.encode(holder), term, cjson.encode(value), expiry_ns, cjson.encode(boot or BOOT_ID))
end

local function mono_ns(offset)
  return math.floor((L.now() + offset) * 1e9)
end

describe("file:// backend", function()
  local dirs, children

  -- A store directory that does not exist yet (the store creates it).
  local function new_dir()
    local parent = H.tmpdir("file")
    dirs[#dirs + 1] = parent
    return parent .. "/store", parent
  end

  -- A process that holds holders/<id>'s lock, like a live store: opened
  -- read-write, so its death raises the same inotify event as a store's;
  -- or, when `silent`, read-only, so its death raises none.
  local function fake_holder(dir, id, silent)
    local path = dir .. "/holders/" .. id
    if silent then H.write(path, "") end
    local open = silent and '3<"$1"' or '3<>"$1"'
    local child = H.spawn({ "sh", "-c", "exec " .. open .. " && flock -x 3 && exec sleep 30", "sh", path })
    children[#children + 1] = child
    assert(H.wait_until(function()
      return H.sh("flock -n -s " .. H.quote(path) .. " true || echo held") ~= ""
    end, 5, 0.01), "the fake holder never locked its file")
    return child
  end

  before_each(function()
    dirs, children = {}, {}
  end)

  after_each(function()
    for _, child in ipairs(children) do H.signal(child, "KILL") end
    -- a failed spec must not leave its elections to fail the next one
    for _, c in ipairs(made) do c:stop() end
    made = {}
    Rec.nothing_alive()
    -- every closed store removed its holder file
    for _, parent in ipairs(dirs) do
      for _, name in ipairs(list(parent .. "/store/holders")) do
        assert.truthy(not name:match("^%d+%-%x+$"), "holder file left behind: " .. name)
      end
      os.execute("rm -rf " .. H.quote(parent))
    end
  end)

  -- A new store directory whose key candidate "a" held once, then released.
  local function led_once()
    local dir = new_dir()
    local s = assert(L.store("file://" .. dir))
    local a = candidate(s, "a")
    a:run()
    assert.truthy(wait_for(function() return a:is_leader() end, 1))
    a:stop()
    return dir, s, dir .. "/" .. KEY_FILE .. ".lease"
  end

  it("elects exactly one of two stores and hands over within 100 ms of stop", function()
    local dir = new_dir()
    local a, ea = candidate(assert(L.store("file://" .. dir)), "a")
    local b, eb = candidate(assert(L.store("file://" .. dir)), "b")
    a:run(); b:run()
    assert.truthy(wait_for(function() return a:is_leader() or b:is_leader() end, 1))
    L.sleep(0.2)
    assert.are_not.equal(a:is_leader(), b:is_leader())
    local leader, other, le, oe = a, b, ea, eb
    if b:is_leader() then leader, other, le, oe = b, a, eb, ea end
    assert.equal(1, leader:term())
    assert.equal(1, count(le, "elected"))
    assert.equal(0, count(oe, "elected"))
    assert.equal(leader == a and "a" or "b", (other:leader()))

    local t0 = L.now()
    leader:stop()
    assert.truthy(wait_for(function() return find(oe, "elected") end, 1), dump(oe))
    local took = find(oe, "elected").at - t0
    assert.truthy(took < 0.1, ("handover took %.3f s"):format(took))
    assert.equal(2, other:term())
    other:stop()
  end)

  it("keeps the lease with renewals and extends the record's expiry", function()
    local dir = new_dir()
    local a, ea = candidate(assert(L.store("file://" .. dir)), "a", KEY, { ttl = 0.3 })
    a:run()
    assert.truthy(wait_for(function() return a:is_leader() end, 1))
    local first = cjson.decode(H.read(dir .. "/" .. KEY_FILE .. ".lease"))
    L.sleep(1.2) -- four ttls: only renewals keep it
    assert.is_true(a:is_leader())
    assert.equal(1, a:term())
    assert.equal(1, count(ea, "elected"))
    assert.equal(0, count(ea, "lost"))
    local now = cjson.decode(H.read(dir .. "/" .. KEY_FILE .. ".lease"))
    assert.truthy(now.expiry > first.expiry + 0.8e9)
    assert.equal("a", now.value)
    a:stop()
    local released = cjson.decode(H.read(dir .. "/" .. KEY_FILE .. ".lease"))
    assert.equal(cjson.null, released.holder)
    assert.equal(1, released.term)
  end)

  -- renew_deadline may be any time below the ttl: renewing every ttl/3
  -- whatever it is let a leader with a short one pass its deadline before
  -- its first renewal, lose, and be elected again, over and over.
  it("renews often enough to keep a renew_deadline shorter than a third of the ttl", function()
    local dir = new_dir()
    local a, ea = candidate(assert(L.store("file://" .. dir)), "a", KEY, { ttl = 3, renew_deadline = 0.5 })
    a:run()
    assert.truthy(wait_for(function() return a:is_leader() end, 1))
    L.sleep(1.5) -- three renew_deadlines: renewing every ttl/3 (1 s) lost it at 0.5 s
    assert.is_true(a:is_leader(), dump(ea))
    assert.equal(1, a:term())
    assert.equal(1, count(ea, "elected"), dump(ea))
    assert.equal(0, count(ea, "lost"), dump(ea))
    a:stop()
  end)

  it("hands a resigned key to the other store, not back to itself", function()
    local dir = new_dir()
    local a = candidate(assert(L.store("file://" .. dir)), "a")
    a:run()
    assert.truthy(wait_for(function() return a:is_leader() end, 1))
    local b, eb = candidate(assert(L.store("file://" .. dir)), "b")
    b:run()
    L.sleep(0.05)
    assert.is_false(b:is_leader())
    a:resign()
    assert.truthy(wait_for(function() return b:is_leader() end, 0.5), dump(eb))
    assert.equal(2, b:term())
    assert.is_false(a:is_leader())
    -- alone, the resigner takes the key back after its grace period
    b:stop()
    assert.truthy(wait_for(function() return a:is_leader() end, 1))
    assert.equal(3, a:term())
    a:stop()
  end)

  it("waits no longer than its grace after its own release, whatever the record's time says", function()
    local dir, s, lease = led_once()
    -- our own release, stamped in the far future (or at the very end of
    -- the clock, where adding the grace overflowed)
    for _, at in ipairs({ "9000000000000000000", "9223372036854775807" }) do
      local text = assert(H.read(lease))
      local n
      text, n = text:gsub('"released_at":%-?%d+', '"released_at":' .. at)
      assert.equal(1, n, text)
      replace(lease, text)
      local c, ev = candidate(s, "c")
      c:run()
      assert.truthy(wait_for(function() return c:is_leader() end, 1), at .. "\n" .. dump(ev))
      c:stop()
    end
  end)

  it("tells a follower in another store of every leader and of vacancy", function()
    local dir = new_dir()
    local s1, s2 = assert(L.store("file://" .. dir)), assert(L.store("file://" .. dir))
    local seen = {}
    local f = L.follower(s2, KEY)
    made[#made + 1] = f
    f.on_leader_change = function(_, leader, term) seen[#seen + 1] = tostring(leader) .. " " .. tostring(term) end
    f:run()
    assert.truthy(wait_for(function() return #seen >= 1 end, 1))
    assert.equal("nil nil", seen[1])
    local a = candidate(s1, "a")
    a:run()
    assert.truthy(wait_for(function() return #seen >= 2 end, 1))
    assert.equal("a 1", seen[2])
    assert.equal("a", (f:leader()))
    a:stop()
    assert.truthy(wait_for(function() return #seen >= 3 end, 1))
    assert.equal("nil nil", seen[3])
    local b = candidate(s2, "b")
    b:run()
    assert.truthy(wait_for(function() return #seen >= 4 end, 1))
    assert.equal("b 2", seen[4])
    assert.equal(4, #seen, table.concat(seen, ", "))
    b:stop(); f:stop()
  end)

  it("carries a value far larger than a page to a follower in another store", function()
    local dir = new_dir()
    local s1, s2 = assert(L.store("file://" .. dir)), assert(L.store("file://" .. dir))
    local big = ("0123456789abcdef"):rep(20000) .. "\u{e9}" -- 320 KB, UTF-8
    local seen
    local f = L.follower(s2, KEY)
    made[#made + 1] = f
    f.on_leader_change = function(_, leader) seen = leader end
    f:run()
    local a = candidate(s1, big)
    a:run()
    assert.truthy(wait_for(function() return seen ~= nil end, 1))
    assert.equal(#big, #seen)
    assert.equal(big, seen)
    a:stop(); f:stop()
  end)

  it("reports a garbage record by file name, recovers, and never lowers the term", function()
    local dir, s, lease = led_once()
    local garbage = {
      '{"holder": "x-1", "term": 7, "val', -- truncated
      "",
      "[1, 2]",
      '{"holder": 5, "term": "x"}',
      '{"holder": "../../etc", "term": 3, "value": "v", "expiry": 1, "boot": "b"}',
      '{"holder": "x-1", "term": 3, "value": 4, "expiry": 1, "boot": "b"}',
    }
    local last = 1
    for i, text in ipairs(garbage) do
      replace(lease, text)
      local c, ev = candidate(s, "c" .. i)
      c:run()
      -- handlers run as tasks: wait for the reports, not just the state
      assert.truthy(wait_for(function() return find(ev, "elected") and find(ev, "error") end, 1),
        "after garbage: " .. text .. "\n" .. dump(ev))
      local err = find(ev, "error")
      assert.truthy(err, "no error for: " .. text)
      assert.truthy(err.a:find(lease, 1, true), err.a)
      assert.equal(last + 1, c:term(), "after garbage: " .. text)
      last = c:term()
      c:stop()
    end
    -- the term file keeps the count when the record cannot: a higher
    -- count there wins over what the record says
    replace(dir .. "/" .. KEY_FILE .. ".term", '{"term": 41}')
    replace(lease, "not json")
    local c, ev = candidate(s, "c")
    c:run()
    assert.truthy(wait_for(function() return find(ev, "elected") end, 1), dump(ev))
    assert.equal(42, c:term())
    -- garbage written over a live leader's record: it loses, reports,
    -- and takes the key again with a higher term
    replace(lease, '{"broken":')
    assert.truthy(wait_for(function() return count(ev, "elected") == 2 end, 1), dump(ev))
    assert.truthy(find(ev, "lost", "deleted"), dump(ev))
    assert.equal(2, count(ev, "error"), dump(ev))
    assert.equal(43, c:term())
    c:stop()
  end)

  -- Anyone who can write the directory can leave a FIFO where a file is
  -- read: opening one for reading blocked until a writer came, and the
  -- whole loop (a leader's deadline with it) waited. Each FIFO here gets
  -- writers from 3 s on, so the old code hangs that long, not for ever.
  -- A FIFO where a record is written first (the store's own temporary
  -- file) blocked the same way, for a reader.
  it("never blocks on a FIFO left where a record, term, mutex, holder or temporary file goes", function()
    local dir = new_dir()
    local s = assert(L.store("file://" .. dir))
    local base = dir .. "/" .. KEY_FILE
    local ours = H.sh("ls " .. H.quote(dir .. "/holders")):match("[^\n]+")
    local cases = {
      { fifo = base .. ".lease" },
      { fifo = base .. ".term" },
      { fifo = base .. ".mutex" },
      { fifo = dir .. "/holders/fifo-1",
        record = record_text("fifo-1", 7, "fifo", mono_ns(60)) },
      { fifo = dir .. "/.tmp-" .. ours .. "-" .. KEY_FILE .. ".lease", read = true },
    }
    for _, case in ipairs(cases) do
      os.remove(base .. ".lease"); os.remove(base .. ".term"); os.remove(base .. ".mutex")
      assert(os.execute("mkfifo " .. H.quote(case.fifo)))
      if case.record then replace(base .. ".lease", case.record) end
      -- opens it for writing (each open lets one blocked reader through),
      -- or reading, for as long as it is a FIFO
      local open = case.read and 'cat "$1" >/dev/null' or ': >"$1"'
      local unblock = H.spawn({ "sh", "-c", 'sleep 3; while [ -p "$1" ]; do ' .. open .. '; done', "sh", case.fifo })
      children[#children + 1] = unblock
      local t0 = L.now()
      local c, ev = candidate(s, "c")
      c:run()
      local elected = wait_for(function() return c:is_leader() end, 1)
      local took = L.now() - t0
      -- stopped before its writer goes: the old code's release blocks too
      c:stop()
      H.signal(unblock, "KILL")
      assert.truthy(elected, case.fifo .. "\n" .. dump(ev))
      assert.truthy(took < 1, ("%s: elected after %.3f s"):format(case.fifo, took))
    end
  end)

  it("refuses a term past the largest a record can hold, instead of wrapping it", function()
    local dir = new_dir()
    local s = assert(L.store("file://" .. dir))
    replace(dir .. "/" .. KEY_FILE .. ".term", '{"term": 9223372036854775807}')
    local c, ev = candidate(s, "c")
    c:run()
    assert.truthy(wait_for(function() return find(ev, "error") end, 1), dump(ev))
    L.sleep(0.2)
    -- never elected with a term that the record and term file would
    -- store as negative (read back as garbage: the count restarts at 1)
    assert.is_nil(find(ev, "elected"), dump(ev))
    assert.truthy(find(ev, "error").a:find("term", 1, true), dump(ev))
    c:stop()
  end)

  it("keeps odd keys inside the directory, each in its own file", function()
    local dir, parent = new_dir()
    local s = assert(L.store("file://" .. dir))
    local keys = {
      ["a/../../x"] = "a%2F%2E%2E%2F%2E%2E%2Fx",
      [".."] = "%2E%2E",
      ["."] = "%2E",
      ["a b"] = "a%20b",
      ["a/b"] = "a%2Fb",
      ["a%2Fb"] = "a%252Fb",
      ["/"] = "%2F",
      ["-_x9"] = "-_x9",
    }
    local cs = {}
    for key in pairs(keys) do
      local c = candidate(s, "v", key)
      c:run()
      cs[key] = c
    end
    assert.truthy(wait_for(function()
      for _, c in pairs(cs) do if not c:is_leader() then return false end end
      return true
    end, 2))
    for _, c in pairs(cs) do assert.equal(1, c:term()) end
    assert.same({ "store" }, list(parent))
    local expected = { "holders" }
    for _, name in pairs(keys) do
      for _, ext in ipairs({ ".lease", ".mutex", ".term" }) do expected[#expected + 1] = name .. ext end
    end
    table.sort(expected)
    assert.same(expected, list(dir))
    for _, c in pairs(cs) do c:stop() end
    assert.has_error(function() L.candidate(s, "", "v") end)
  end)

  it("refuses a key whose file name would be too long, through on_error", function()
    local dir = new_dir()
    local c, ev = candidate(assert(L.store("file://" .. dir)), "v", ("k/"):rep(100))
    c.retry = function() return nil end
    c:run()
    assert.truthy(wait_for(function() return find(ev, "error") end, 1))
    assert.truthy(find(ev, "error").a:find("too long", 1, true), dump(ev))
    assert.is_false(c:is_leader())
    c:stop()
  end)

  it("waits for a hung holder's lease to expire, then takes over", function()
    local dir = new_dir()
    local s = assert(L.store("file://" .. dir)) -- creates the directory
    fake_holder(dir, "hung-1")
    local expiry = L.now() + 0.4
    replace(dir .. "/" .. KEY_FILE .. ".lease", record_text("hung-1", 5, "hung", mono_ns(0.4)))
    local b, eb = candidate(s, "b")
    b:run()
    assert.truthy(wait_for(function() return find(eb, "leader", "hung") end, 1), dump(eb))
    assert.equal(5, find(eb, "leader", "hung").b)
    assert.truthy(wait_for(function() return find(eb, "elected") end, 1), dump(eb))
    local at = find(eb, "elected").at
    assert.truthy(at >= expiry - 0.01, ("elected %.3f s before the expiry"):format(expiry - at))
    assert.truthy(at < expiry + 0.1, ("elected %.3f s after the expiry"):format(at - expiry))
    assert.equal(6, b:term())
    b:stop()
  end)

  it("takes over within 100 ms when a live holder is killed", function()
    local dir = new_dir()
    local s = assert(L.store("file://" .. dir))
    local holder = fake_holder(dir, "other-1")
    replace(dir .. "/" .. KEY_FILE .. ".lease", record_text("other-1", 9, "other", mono_ns(60)))
    local b, eb = candidate(s, "b")
    b:run()
    assert.truthy(wait_for(function() return find(eb, "leader", "other") end, 1), dump(eb))
    L.sleep(0.1)
    assert.is_false(b:is_leader())
    local t0 = L.now()
    H.signal(holder, "KILL")
    assert.truthy(wait_for(function() return find(eb, "elected") end, 1), dump(eb))
    local took = find(eb, "elected").at - t0
    io.stderr:write(("\n[file] takeover after kill -9 of the holder: %.1f ms\n"):format(took * 1000))
    assert.truthy(took < 0.1, ("takeover took %.3f s"):format(took))
    assert.equal(10, b:term())
    b:stop()
  end)

  -- The kernel raises a dead holder's close event just before it drops the
  -- lock, so the check it wakes may still find the lock held. Played here
  -- by a holder whose lock is on a read-only descriptor (its death raises
  -- no event) and a write-close of its file by the spec while it lives.
  it("checks again when a holder file closes while its lock is still held", function()
    local dir = new_dir()
    local s = assert(L.store("file://" .. dir))
    local path = dir .. "/holders/other-2"
    local holder = fake_holder(dir, "other-2", true)
    replace(dir .. "/" .. KEY_FILE .. ".lease", record_text("other-2", 4, "other", mono_ns(60)))
    local b, eb = candidate(s, "b")
    b:run()
    assert.truthy(wait_for(function() return find(eb, "leader", "other") end, 1), dump(eb))
    assert(io.open(path, "r+")):close() -- the close event, lock still held
    L.sleep(0.02)
    assert.is_false(b:is_leader())
    local t0 = L.now()
    H.signal(holder, "KILL") -- the lock goes, with no event
    assert.truthy(wait_for(function() return find(eb, "elected") end, 2), dump(eb))
    local took = find(eb, "elected").at - t0
    assert.truthy(took < 1, ("takeover took %.3f s"):format(took))
    assert.equal(5, b:term())
    b:stop()
  end)

  -- The same, when the close event comes in the batch that brings the
  -- holder's record, before the check that first sees that holder: a
  -- holder that takes the key and dies at once. The close was once
  -- matched only against the holder already seen, so the follower named
  -- the dead holder until its lease expired.
  it("checks again when a holder file closes before its record is first read", function()
    local dir = new_dir()
    local s = assert(L.store("file://" .. dir))
    local path = dir .. "/holders/other-3"
    local holder = fake_holder(dir, "other-3", true)
    local seen = {}
    local f = L.follower(s, KEY)
    made[#made + 1] = f
    f.on_leader_change = function(_, leader, term) seen[#seen + 1] = tostring(leader) .. " " .. tostring(term) end
    f:run()
    assert.truthy(wait_for(function() return #seen >= 1 end, 1))
    assert.equal("nil nil", seen[1])
    -- both events before the loop runs again: the record, then the close
    replace(dir .. "/" .. KEY_FILE .. ".lease", record_text("other-3", 4, "other", mono_ns(60)))
    assert(io.open(path, "r+")):close()
    assert.truthy(wait_for(function() return #seen >= 2 end, 1), table.concat(seen, ", "))
    assert.equal("other 4", seen[2])
    H.signal(holder, "KILL") -- the lock goes, with no event
    assert.truthy(wait_for(function() return #seen >= 3 end, 2), table.concat(seen, ", "))
    assert.equal("nil nil", seen[3])
    f:stop()
  end)

  -- A candidate that found the key mutex busy, then saw someone else take
  -- the key, kept the time it was first busy: the next busy mutex, however
  -- brief and however much later, counted from then and was reported as
  -- locked for over a second.
  it("counts a busy key mutex from when it was found busy this time", function()
    local dir = new_dir()
    local s = assert(L.store("file://" .. dir))
    local mutex = dir .. "/" .. KEY_FILE .. ".mutex"
    local function lock_mutex(seconds)
      local child = H.spawn({ "flock", "-x", mutex, "sleep", tostring(seconds) })
      children[#children + 1] = child
      assert(H.wait_until(function()
        return H.sh("flock -n -s " .. H.quote(mutex) .. " true || echo held") ~= ""
      end, 5, 0.01), "the mutex was never locked")
    end
    local holder = fake_holder(dir, "other-4")
    lock_mutex(0.3)
    local c, ec = candidate(s, "c")
    c:run() -- finds the key vacant and its mutex busy
    L.sleep(0.05)
    replace(dir .. "/" .. KEY_FILE .. ".lease", record_text("other-4", 3, "other", mono_ns(60)))
    assert.truthy(wait_for(function() return find(ec, "leader", "other") end, 1), dump(ec))
    L.sleep(1.2)
    lock_mutex(0.3)
    H.signal(holder, "KILL") -- vacant again, the mutex busy for 0.3 s
    assert.truthy(wait_for(function() return find(ec, "elected") end, 2), dump(ec))
    assert.equal(4, c:term())
    assert.is_nil(find(ec, "error"), dump(ec))
    c:stop()
  end)

  -- This process's voluntary context switches: how often the loop slept.
  local function wakeups()
    for line in io.lines("/proc/self/status") do
      local n = line:match("^voluntary_ctxt_switches:%s*(%d+)")
      if n then return tonumber(n) end
    end
  end

  -- A leader "c" of KEY (with options) in a new store, then its key mutex
  -- locked for 4 s by another process: s, c, its events, the mutex path.
  local function leader_behind_locked_mutex(options)
    local dir = new_dir()
    local s = assert(L.store("file://" .. dir))
    local mutex = dir .. "/" .. KEY_FILE .. ".mutex"
    local c, ec = candidate(s, "c", KEY, options)
    c:run()
    assert.truthy(wait_for(function() return c:is_leader() end, 1), dump(ec))
    local locker = H.spawn({ "flock", "-x", mutex, "sleep", "4" })
    children[#children + 1] = locker
    assert(H.wait_until(function()
      return H.sh("flock -n -s " .. H.quote(mutex) .. " true || echo held") ~= ""
    end, 5, 0.01), "the mutex was never locked")
    return s, c, ec, mutex
  end

  -- A leader whose renewal found the key mutex busy tried again every 2 ms
  -- for as long as it stayed busy (500 wake-ups a second) and never told
  -- on_error, unlike a candidate's campaign.
  it("renews through a busy key mutex slowly, and reports a long spell", function()
    local _, c, ec, mutex = leader_behind_locked_mutex({ ttl = 6, renew_deadline = 4.5 })
    -- the renewal due at ttl/3 = 2 s finds it busy until 4 s, the deadline 4.5 s
    assert.truthy(wait_for(function() return find(ec, "error") end, 3.5), dump(ec))
    assert.matches("locked for over 1 s", find(ec, "error").a)
    assert.is_true(c:is_leader())
    -- still busy: retries every 20 ms wake the loop some 50 times in 0.5 s
    local before = wakeups()
    L.sleep(0.5)
    assert.is_true(wakeups() - before < 100, "woke " .. (wakeups() - before) .. " times in 0.5 s")
    assert.truthy(wait_for(function() return H.sh("flock -n -s " .. H.quote(mutex) .. " true || echo held") == "" end, 4))
    L.sleep(0.2) -- the next retry renews
    assert.is_true(c:is_leader(), dump(ec))
    assert.equal(1, c:term())
    assert.is_nil(find(ec, "lost"), dump(ec))
    c:stop()
  end)

  -- A leader stopped while another process held the key mutex retried its
  -- release every 2 ms, for a ttl counted from the stop, holding the loop
  it("retries a release through a busy key mutex slowly, and not past its lease's expiry", function()
    local s, c = leader_behind_locked_mutex({ ttl = 2 })
    local stopped_at = L.now()
    c:stop()
    local retrying = L.live().holds -- the release among them
    L.sleep(0.2)
    local before = wakeups()
    L.sleep(0.5)
    assert.is_true(wakeups() - before < 100, "woke " .. (wakeups() - before) .. " times in 0.5 s")
    -- given up once the lease (written at the last renewal, ttl 2) expired
    assert.truthy(wait_for(function() return L.live().holds < retrying end, 2.5))
    assert.is_true(L.now() - stopped_at < 2.2, "held the loop " .. (L.now() - stopped_at) .. " s")
    s:close()
  end)

  -- Ages the file path_of(dir) names by 20 days under a leader of KEY on
  -- dir, and checks that a renewal round made its times new again.
  local function renewal_keeps_young(name, path_of)
    local dir = new_dir()
    local s = assert(L.store("file://" .. dir))
    local c, ec = candidate(s, "c", KEY, { ttl = 2 })
    c:run()
    assert.truthy(wait_for(function() return c:is_leader() end, 1), dump(ec))
    local path = H.quote(path_of(dir))
    H.sh("touch -d '20 days ago' " .. path)
    local function age() return os.time() - tonumber(H.sh("stat -c %Y " .. path)) end
    assert.is_true(age() > 86400)
    L.sleep(1) -- a renewal round (every ttl/3), which takes the key's mutex
    assert.is_true(age() < 5, name .. " " .. age() .. " s old")
    assert.is_true(c:is_leader())
    c:stop()
  end

  it("keeps its holder file's times new while it leads (cleaners by age would remove it)", function()
    renewal_keeps_young("holder file", function(dir)
      local holders = list(dir .. "/holders")
      assert.equal(1, #holders)
      return dir .. "/holders/" .. holders[1]
    end)
  end)

  it("keeps a key mutex's times new when it takes it (cleaners by age would remove it)", function()
    renewal_keeps_young("mutex", function(dir) return dir .. "/" .. KEY_FILE .. ".mutex" end)
  end)

  it("syncs a term to disk, file and directory, before the lease that shows it", function()
    if H.sh("command -v strace") == "" then
      error("strace is not installed (bootstrap.sh test installs it)")
    end
    local dir, parent = new_dir()
    local script, trace = parent .. "/lead.lua", parent .. "/trace"
    H.write(script, ([[
      package.path = %q .. "/lua/?.lua;" .. %q .. "/lua/?/init.lua;" .. package.path
      package.cpath = %q .. "/lua/?.so;" .. package.cpath
      local L = require "leadership"
      local s = assert(L.store("file://" .. %q))
      local c = L.candidate(s, %q, "a", { ttl = 1 })
      c:run()
      for _ = 1, 500 do if c:is_leader() then break end L.sleep(0.01) end
      assert(c:is_leader(), "never elected")
      c:stop()
      s:close()
    ]]):format(H.build, H.build, H.build, dir, KEY))
    -- LeakSanitizer cannot stop a traced process's threads (`make asan test`)
    local out = H.sh("ASAN_OPTIONS=detect_leaks=0 strace -f -qq -e trace=openat,fsync,rename -o "
      .. H.quote(trace) .. " lua5.4 " .. H.quote(script) .. " 2>&1; echo rc=$?")
    assert.truthy(out:match("rc=0\n$"), out)
    local calls = {}
    for line in io.lines(trace) do calls[#calls + 1] = line:gsub("^%d+%s+", "") end
    local function find(from, pattern)
      for i = from, #calls do
        if calls[i]:find(pattern) then return i end
      end
    end
    local term_file = KEY_FILE:gsub("%%", "%%%%") .. "%.term"
    local opened = assert(find(1, '^openat%(.-%.tmp%-[^"]*' .. term_file .. '".-= (%d+)$'),
      table.concat(calls, "\n"))
    local fd = calls[opened]:match("= (%d+)$")
    local renamed = assert(find(opened, '^rename%(.-' .. term_file .. '"%)'), "no rename of the term")
    local synced = find(opened, "^fsync%(" .. fd .. "%)")
    assert.truthy(synced and synced < renamed, "the term file is not synced before its rename")
    local dir_opened = assert(find(renamed, "O_DIRECTORY"), "the directory is not opened after the rename")
    local dir_fd = calls[dir_opened]:match("= (%d+)$")
    local dir_synced = find(dir_opened, "^fsync%(" .. dir_fd .. "%)")
    local lease_renamed = assert(find(renamed, '^rename%(.-%.lease"%)'), "no rename of the lease")
    assert.truthy(dir_synced and dir_synced < lease_renamed,
      "the directory is not synced before the lease is written")
  end)

  it("refuses to open when this boot's id cannot be read", function()
    if H.sh("id -u"):match("^0%s") == nil then return pending("needs root (unshare -m)") end
    local dir = new_dir()
    -- /dev/null over the boot id, in a mount namespace of its own
    local out = H.sh(("unshare -m sh -c 'mount --bind /dev/null /proc/sys/kernel/random/boot_id && " ..
                      "exec %s leader --store file://%s --key k' 2>&1; echo rc=$?"):format(H.bin, dir))
    assert.matches("/proc/sys/kernel/random/boot_id is empty", out)
    assert.matches("rc=[12]\n$", out)
  end)

  it("loses a lease taken behind its back, and sees the new holder", function()
    local dir = new_dir()
    local s = assert(L.store("file://" .. dir))
    local a, ea = candidate(s, "a")
    a:run()
    assert.truthy(wait_for(function() return a:is_leader() end, 1))
    local intruder = fake_holder(dir, "intruder-1")
    replace(dir .. "/" .. KEY_FILE .. ".lease", record_text("intruder-1", 99, "intruder", mono_ns(60)))
    assert.truthy(wait_for(function() return find(ea, "lost") end, 1), dump(ea))
    assert.equal("deleted", find(ea, "lost").a)
    assert.is_false(a:is_leader())
    assert.truthy(wait_for(function() return find(ea, "leader", "intruder") end, 1), dump(ea))
    H.signal(intruder, "KILL")
    assert.truthy(wait_for(function() return a:is_leader() end, 1), dump(ea))
    assert.equal(100, a:term())
    a:stop()
  end)

  -- A store's watches are on the directories it opened: once they are
  -- removed and made again, it heard nothing more, and its holder file was
  -- gone with them, so every lease it took from then on counted as a dead
  -- holder's. Two leaders until its next renewal; a follower that never
  -- again heard of a change.
  it("starts again when its directory is removed and made again", function()
    local dir = new_dir()
    local sa, sb, sf = assert(L.store("file://" .. dir)), assert(L.store("file://" .. dir)),
      assert(L.store("file://" .. dir))
    local opts = { ttl = 3 }
    local a, ea = candidate(sa, "a", KEY, opts)
    local b, eb = candidate(sb, "b", KEY, opts)
    for _, c in ipairs({ a, b }) do c.retry = function() return 0.1 end end
    local seen = {}
    local f = L.follower(sf, KEY)
    made[#made + 1] = f
    f.retry = function() return 0.1 end
    f.on_leader_change = function(_, leader, term) seen[#seen + 1] = tostring(leader) .. " " .. tostring(term) end
    a:run()
    assert.truthy(wait_for(function() return a:is_leader() end, 1))
    b:run(); f:run()
    assert.truthy(wait_for(function() return seen[#seen] == "a 1" end, 1), table.concat(seen, ", "))
    os.execute("rm -rf " .. H.quote(dir) .. " && mkdir -p " .. H.quote(dir .. "/holders"))
    -- never both at once; soon one, whom the follower names (the term
    -- count went with the directory: 1 again is no stale leader)
    local both
    local function settled(leader, other)
      if a:is_leader() and b:is_leader() then both = true end
      return both or (leader:is_leader() and not other:is_leader()
        and seen[#seen] == ("%s %d"):format(leader == a and "a" or "b", leader:term()))
    end
    local function either() return settled(a, b) or settled(b, a) end
    assert.truthy(wait_for(either, 3), table.concat(seen, ", ") .. "\n" .. dump(ea) .. "\n--\n" .. dump(eb))
    assert.is_nil(both, "two leaders\n" .. dump(ea) .. "\n--\n" .. dump(eb))
    -- the leader's lease holds against the other (its holder file is there)
    L.sleep(0.3)
    assert.truthy(either(), dump(ea) .. "\n--\n" .. dump(eb))
    assert.is_nil(both, "two leaders\n" .. dump(ea) .. "\n--\n" .. dump(eb))
    -- and everyone hears of the next change
    local leader, other = a, b
    if b:is_leader() then leader, other = b, a end
    leader:stop()
    assert.truthy(wait_for(function() return settled(other, leader) end, 1),
      table.concat(seen, ", ") .. "\n" .. dump(ea) .. "\n--\n" .. dump(eb))
    a:stop(); b:stop(); f:stop()
  end)

  -- Its holder file alone removed: every other store judged its leases a
  -- dead holder's and took them over, and it never made the file again.
  it("steps down and starts again with a new holder file when its own is removed", function()
    local dir = new_dir()
    local sa = assert(L.store("file://" .. dir))
    local a, ea = candidate(sa, "a")
    a.retry = function() return 0.1 end
    a:run()
    assert.truthy(wait_for(function() return a:is_leader() end, 1))
    local ids = list(dir .. "/holders")
    assert.equal(1, #ids)
    os.remove(dir .. "/holders/" .. ids[1])
    assert.truthy(wait_for(function() return find(ea, "lost") and a:is_leader() end, 1), dump(ea))
    assert.equal("session", find(ea, "lost").a)
    assert.equal(2, a:term())
    assert.equal(1, #list(dir .. "/holders"), dump(ea))
    local c, ec = candidate(assert(L.store("file://" .. dir)), "c")
    c:run()
    assert.truthy(wait_for(function() return find(ec, "leader", "a") end, 1), dump(ec))
    L.sleep(0.2)
    assert.is_false(c:is_leader(), dump(ec))
    assert.is_true(a:is_leader(), dump(ea))
    a:stop(); c:stop()
  end)

  it("treats a record from another boot as vacant", function()
    local dir = new_dir()
    local s = assert(L.store("file://" .. dir))
    fake_holder(dir, "old-1")
    replace(dir .. "/" .. KEY_FILE .. ".lease",
      record_text("old-1", 3, "old", mono_ns(60), "00000000-0000-0000-0000-000000000000"))
    local b, eb = candidate(s, "b")
    b:run()
    assert.truthy(wait_for(function() return b:is_leader() end, 0.1), dump(eb))
    assert.equal(4, b:term())
    assert.is_nil(find(eb, "leader", "old"))
    b:stop()
  end)

  it("creates the directory, and names the problem when it cannot", function()
    local dir, parent = new_dir()
    local s = assert(L.store("file://" .. dir .. "/deeper/still"))
    s:close()
    assert.same({ "holders" }, list(dir .. "/deeper/still"))
    H.write(parent .. "/plain", "x")
    local s2, err = L.store("file://" .. parent .. "/plain/sub")
    assert.is_nil(s2)
    assert.truthy(err:find(parent .. "/plain/sub", 1, true), err)
    local s3, err3 = L.store("file://" .. parent .. "/plain")
    assert.is_nil(s3)
    assert.truthy(err3:find(parent .. "/plain", 1, true) and err3:find("not a directory", 1, true), err3)
    local ok, msg = pcall(L.store, "file://" .. dir .. "?bogus=1")
    assert.is_false(ok)
    assert.truthy(tostring(msg):find("unknown option 'bogus'", 1, true), msg)
    assert.truthy(L.store("file://" .. dir .. "?timeout=2"))
  end)
end)
