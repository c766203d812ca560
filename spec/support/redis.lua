-- Starts a throwaway redis-server for the specs: 127.0.0.1, a free port,
-- its own temp dir, no persistence (so a restart loses every key, which
-- the specs rely on), optional requirepass.
local R = {}
R.__index = R

-- Sanitizer runs preload libasan into the spec process; the servers and
-- tools it starts must not inherit that.
local CLEAN = { "env", "-u", "LD_PRELOAD" }

local function cli_words(self)
  local words = { CLEAN[1], CLEAN[2], CLEAN[3], "redis-cli", "-h", "127.0.0.1", "-p", tostring(self.port) }
  if self.password then
    words[#words + 1] = "--no-auth-warning"
    words[#words + 1] = "-a"
    words[#words + 1] = self.password
  end
  return words
end

-- Runs redis-cli with `...` as the command; returns its output, trimmed.
function R:cli(...)
  local words = cli_words(self)
  for _, a in ipairs({ ... }) do words[#words + 1] = a end
  for i, w in ipairs(words) do words[i] = H.quote(w) end
  return (H.sh(table.concat(words, " ") .. " 2>&1"):gsub("%s+$", ""))
end

local function listening(port)
  return H.sh(("ss -Htln 'sport = :%d' 2>/dev/null"):format(port)):match("%S") ~= nil
end

function R:launch()
  -- a killed server may take a moment to let go of its port
  H.wait_until(function() return not listening(self.port) end, 5, 0.05)
  local argv = { CLEAN[1], CLEAN[2], CLEAN[3], "redis-server", "--bind", "127.0.0.1", "--port", tostring(self.port),
                 "--dir", self.dir, "--save", "", "--appendonly", "no",
                 "--daemonize", "no", "--logfile", self.dir .. "/redis.log" }
  if self.password then
    argv[#argv + 1] = "--requirepass"
    argv[#argv + 1] = self.password
  end
  self.proc = H.spawn(argv, { dir = self.dir })
  local up = H.wait_until(function()
    return self:cli("PING") == "PONG" or not H.alive(self.proc)
  end, 10, 0.05)
  up = up and H.alive(self.proc)
  if not up then
    local log = H.read(self.dir .. "/redis.log") or ""
    self:kill()
    error("redis-server did not start on port " .. self.port .. ":\n" .. log)
  end
end

-- opts: password
function R.start(opts)
  opts = opts or {}
  local self = setmetatable({ password = opts.password, port = H.free_port(),
                              dir = H.tmpdir("redis") }, R)
  self:launch()
  self.url = "redis://127.0.0.1:" .. self.port
  return self
end

-- Gone at once, no shutdown: what a crash looks like to clients.
function R:kill()
  if self.proc and H.alive(self.proc) then
    H.signal(self.proc, "CONT") -- in case a spec stopped it
    H.signal(self.proc, "KILL")
    H.wait_until(function() return not H.alive(self.proc) end, 5)
  end
end

-- A crash and a restart on the same port, with every key lost.
function R:restart(down_seconds)
  self:kill()
  if down_seconds and down_seconds > 0 then os.execute(("sleep %g"):format(down_seconds)) end
  self:launch()
end

function R:stop()
  self:kill()
  if self.dir and self.dir:match("^/tmp/leadership%-redis") then
    os.execute("rm -rf " .. H.quote(self.dir))
  end
end

return R
