-- The executable's command line: every kind of bad input gets a one-line
-- message naming what is wrong, and exit status 2.
local O = require "ops"

local function run(args, policy_text)
  local dir = H.tmpdir("cli")
  local policy = dir .. "/policy.lua"
  if policy_text then H.write(policy, policy_text) end
  local words = { H.quote(H.bin) }
  for _, a in ipairs(args) do words[#words + 1] = H.quote((a:gsub("POLICY", policy))) end
  local out = H.sh(table.concat(words, " ") .. " 2>&1; echo \"exit=$?\"")
  os.execute("rm -rf " .. H.quote(dir))
  local status = tonumber(out:match("exit=(%d+)%s*$"))
  return out:gsub("exit=%d+%s*$", ""), status
end

local GOOD = [[return { store = "memory://cli", key = "k", ttl = 5 }]]

describe("leadership (the executable)", function()
  it("prints help and version", function()
    local out, status = run({ "--help" })
    assert.equal(0, status)
    assert.truthy(out:match("usage: leadership run POLICY.lua"))
    out, status = run({ "--version" })
    assert.equal(0, status)
    assert.truthy(out:match("^leadership %d+%.%d+%.%d+"))
  end)

  local cases = {
    { "missing policy", { "run", "/nonexistent/p.lua" }, nil, "cannot read policy '/nonexistent/p.lua': No such file" },
    { "policy that raises", { "run", "POLICY" }, "error('nope')", "policy .-policy%.lua:1: nope" },
    { "syntax error", { "run", "POLICY" }, "return {", "policy .-policy%.lua:1: unexpected symbol near <eof>" },
    { "not a table", { "run", "POLICY" }, "return 42", "policy .-policy%.lua.-must return a table, got number" },
    { "unknown field", { "run", "POLICY" }, [[return { store = "memory://x", key = "k", on_elect = print }]],
      "unknown field 'on_elect' %(did you mean 'on_elected'%?%)" },
    { "unknown scheme", { "run", "POLICY", "--store", "etdc://127.0.0.1:2379" }, GOOD,
      "unknown store backend 'etdc' in 'etdc://127.0.0.1:2379'" },
    { "malformed URL", { "run", "POLICY", "--store", "127.0.0.1:2379" }, GOOD,
      "malformed store URL '127.0.0.1:2379'" },
    { "empty key", { "run", "POLICY", "--key", "" }, GOOD, "key must be a non%-empty string" },
    { "ttl 0", { "run", "POLICY", "--ttl", "0" }, GOOD, "ttl must be > 0 seconds, got 0" },
    { "ttl negative", { "run", "POLICY", "--ttl", "-3" }, GOOD, "ttl must be > 0 seconds, got %-3" },
    { "ttl not a number", { "run", "POLICY", "--ttl", "soon" }, GOOD, "ttl must be a number of seconds, got 'soon'" },
    { "node with newline", { "run", "POLICY", "--node", "a\nb" }, GOOD, "node must not contain a newline" },
    { "bad retry table", { "run", "POLICY" }, [[return { store = "memory://x", key = "k", retry = { factr = 2 } }]],
      "bad retry: unknown backoff field 'factr' %(did you mean 'factor'%?%)" },
    { "retry not a table", { "run", "POLICY" }, [[return { store = "memory://x", key = "k", retry = 5 }]],
      "retry must be a table" },
    { "bad mode", { "run", "POLICY" }, [[return { store = "memory://x", key = "k", mode = "leader" }]],
      "mode must be \"candidate\" or \"follower\"" },
    { "unknown flag", { "run", "POLICY", "--tll", "5" }, GOOD, "unknown flag '%-%-tll' %(did you mean '%-%-ttl'%?%)" },
    { "unknown command", { "rn", "POLICY" }, GOOD, "unknown command 'rn' %(did you mean 'run'%?%)" },
    { "ttl out of the store's range", { "run", "POLICY", "--ttl", "100000" }, GOOD,
      "ttl 100000 is out of range for the memory store" },
    -- store = { url = ..., options }: the options reach the store
    { "store option out of range", { "run", "POLICY" }, [[return { store = { url = "memory://x", timeout = 0 }, key = "k" }]],
      "store option 'timeout' must be in %(0, 3600%] seconds" },
    { "store option the backend lacks", { "run", "POLICY" },
      [[return { store = { url = "memory://x", tls = { ca = "/etc/ca.pem" } }, key = "k" }]],
      "unknown option 'tls.ca' for the memory store" },
  }
  for _, case in ipairs(cases) do
    local name, args, policy, expected = table.unpack(case)
    it("rejects a " .. name .. " with status 2", function()
      local out, status = run(args, policy)
      assert.equal(2, status, out)
      assert.truthy(out:match("^leadership: .-" .. expected), out)
      assert.equal(1, select(2, out:gsub("\n", "")), "one line: " .. out)
    end)
  end

  for _, signal in ipairs({ "TERM", "INT" }) do
    it("runs a policy and stops on SIG" .. signal .. ", releasing, with status 0", function()
      local dir = H.tmpdir("cli")
      H.write(dir .. "/p.lua", [[
        return { store = "memory://run", key = "k", ttl = 1,
          on_elected = function(ctx) print("elected " .. ctx.term) io.stdout:flush() end,
          on_lost = function(ctx, reason) print("lost " .. reason) io.stdout:flush() end }]])
      local proc, status = O.spawn_status({ H.bin, "run", dir .. "/p.lua" }, { dir = dir })
      finally(function() H.stop(proc, 1) end)
      assert.truthy(H.wait_until(function() return (H.read(proc.stdout) or ""):match("elected 1") end, 5))
      H.signal(proc, signal)
      assert.equal(0, O.wait_status(status, 5))
      assert.truthy((H.read(proc.stdout) or ""):match("lost stop"))
      os.execute("rm -rf " .. H.quote(dir))
    end)
  end

  it("gives handlers ctx.node (the hostname by default), ctx.key, ctx.log and ctx.resign", function()
    local dir = H.tmpdir("cli")
    H.write(dir .. "/p.lua", [[
      return { store = "memory://ctx", key = "svc/k", ttl = 1,
        on_elected = function(ctx)
          print("elected " .. ctx.term .. " " .. ctx.node .. " " .. ctx.key) io.stdout:flush()
          if ctx.term == 1 then ctx.log("stepping", "down") ctx.resign() end
        end,
        on_lost = function(ctx, reason) print("lost " .. reason) io.stdout:flush() end }]])
    local proc = H.spawn({ H.bin, "run", dir .. "/p.lua" }, { dir = dir })
    finally(function() H.stop(proc) end)
    local host = H.read("/proc/sys/kernel/hostname"):match("[^\n]+")
    local expected = "^elected 1 " .. host:gsub("%p", "%%%0") .. " svc/k\nlost resign\nelected 2 "
    assert.truthy(H.wait_until(function() return (H.read(proc.stdout) or ""):match(expected) end, 5),
      H.read(proc.stdout))
    assert.truthy(H.read(proc.stderr):match(host:gsub("%p", "%%%0") .. ": stepping down"), H.read(proc.stderr))
    os.execute("rm -rf " .. H.quote(dir))
  end)

  it("runs a follower policy (mode = \"follower\"): it sees the leader and the vacancy, never leads", function()
    local dir = H.tmpdir("cli")
    local store = "file://" .. dir .. "/store"
    H.write(dir .. "/leader.lua", ([[
      return { store = %q, key = "k", node = "a", ttl = 1,
        on_elected = function(ctx) print("elected " .. ctx.term) io.stdout:flush() end }]]):format(store))
    H.write(dir .. "/follower.lua", ([[
      return { store = %q, key = "k", node = "f", ttl = 1, mode = "follower",
        on_elected = function(ctx) print("elected") io.stdout:flush() end,
        on_leader_change = function(ctx, leader, term)
          print("leader " .. tostring(leader) .. " " .. tostring(term)) io.stdout:flush()
        end }]]):format(store))
    local a = H.spawn({ H.bin, "run", dir .. "/leader.lua" }, { stdout = dir .. "/a.out", stderr = dir .. "/a.err" })
    finally(function() H.stop(a) end)
    assert.truthy(H.wait_until(function() return (H.read(a.stdout) or ""):match("elected 1") end, 5))
    local f = H.spawn({ H.bin, "run", dir .. "/follower.lua" }, { stdout = dir .. "/f.out", stderr = dir .. "/f.err" })
    finally(function() H.stop(f) end)
    assert.truthy(H.wait_until(function() return (H.read(f.stdout) or ""):match("leader a 1") end, 5),
      H.read(f.stderr))
    H.stop(a)
    assert.truthy(H.wait_until(function() return (H.read(f.stdout) or ""):match("leader nil nil") end, 5),
      H.read(f.stdout))
    assert.falsy(H.read(f.stdout):match("elected"), H.read(f.stdout))
    H.stop(f)
    os.execute("rm -rf " .. H.quote(dir))
  end)

  -- A coroutine made by the policy's top level, outside any handler, has
  -- no budget hook of its own: a handler running it gets one all the same.
  it("aborts a handler spinning in a coroutine the policy made, and goes on leading", function()
    local dir = H.tmpdir("cli")
    H.write(dir .. "/p.lua", [[
      local spin = coroutine.wrap(function() while true do end end)
      return { store = "memory://run", key = "k", ttl = 1,
        on_elected = function(ctx) print("elected " .. ctx.term) io.stdout:flush() pcall(spin) end,
        on_error = function(ctx, err) print("error " .. err) io.stdout:flush() end,
        on_lost = function(ctx, reason) print("lost " .. reason) io.stdout:flush() end }]])
    local proc = H.spawn({ H.bin, "run", dir .. "/p.lua" }, { dir = dir })
    finally(function() H.stop(proc, 1) end) -- a process that spins has no ear for SIGTERM
    assert.truthy(H.wait_until(function() return (H.read(proc.stdout) or ""):match("error .-budget") end, 5),
      H.read(proc.stdout))
    os.execute("sleep 1.5") -- more than a ttl: renewals went on
    assert.is_true(H.alive(proc))
    local out = H.read(proc.stdout)
    assert.falsy(out:match("lost"), out)
    assert.equal(1, select(2, out:gsub("elected %d", "")), out) -- one term
    os.execute("rm -rf " .. H.quote(dir))
  end)
end)
