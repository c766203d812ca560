-- Starts the Consul double (spec/support/consul-double.c, built by `make`
-- as $BUILD/consul-double) for the specs: 127.0.0.1, a free port, optional
-- ACL token. No real Consul can be installed here; see "The Consul double" in README.md
-- for what the double models and what it does not.
local C = {}
C.__index = C

C.bin = H.build .. "/consul-double"

function C.available()
  return H.sh("test -x " .. H.quote(C.bin) .. " && echo yes"):match("yes") ~= nil
end

-- One HTTP request with curl: returns status (number) and body. curl runs
-- without the sanitizer runtime `make asan test` preloads (it hangs there).
function C:http(method, path, body)
  local words = { "env", "-u", "LD_PRELOAD", "curl", "-s", "-o", "-", "-w", "'\n%{http_code}'",
                  "-X", method }
  if self.token then
    words[#words + 1] = "-H"
    words[#words + 1] = H.quote("X-Consul-Token: " .. self.token)
  end
  if body then
    words[#words + 1] = "--data-binary"
    words[#words + 1] = H.quote(body)
  end
  words[#words + 1] = H.quote(("http://127.0.0.1:%d%s"):format(self.port, path))
  local out = H.sh(table.concat(words, " ") .. " 2>/dev/null")
  local text, code = out:match("^(.*)\n(%d+)$")
  return tonumber(code or 0), text or out
end

-- The session IDs the agent knows now.
function C:sessions()
  local cjson = require "cjson"
  local code, body = self:http("GET", "/v1/session/list")
  assert(code == 200, "session list: " .. tostring(code) .. " " .. tostring(body))
  local ids = {}
  for _, s in ipairs(cjson.decode(body)) do ids[#ids + 1] = s.ID end
  return ids
end

-- The decoded entry of `key`, or nil if there is none.
function C:entry(key)
  local cjson = require "cjson"
  local code, body = self:http("GET", "/v1/kv/" .. key)
  if code == 404 then return nil end
  assert(code == 200, "kv read: " .. tostring(code) .. " " .. tostring(body))
  return cjson.decode(body)[1]
end

function C:launch()
  local argv = { C.bin, "--port", tostring(self.port), "--verbose" }
  if self.acl_token then
    argv[#argv + 1] = "--acl-token"
    argv[#argv + 1] = self.acl_token
  end
  self.proc = H.spawn(argv, { dir = self.dir, stderr = self.dir .. "/double.log" })
  local up = H.wait_until(function() return self:http("GET", "/v1/status/leader") == 200 end, 5,
                          0.05)
  if not up then
    local log = H.read(self.dir .. "/double.log") or ""
    self:kill()
    error("consul-double did not start on port " .. self.port .. ":\n" .. log)
  end
end

-- opts: acl_token (the agent then refuses every other token)
function C.start(opts)
  opts = opts or {}
  local self = setmetatable({ acl_token = opts.acl_token, token = opts.acl_token,
                              port = H.free_port(), dir = H.tmpdir("consul") }, C)
  self:launch()
  self.url = "consul://127.0.0.1:" .. self.port
  return self
end

function C:log()
  return H.read(self.dir .. "/double.log") or ""
end

function C:kill()
  if self.proc and H.alive(self.proc) then
    H.signal(self.proc, "KILL")
    H.wait_until(function() return not H.alive(self.proc) end, 5)
  end
end

function C:stop()
  self:kill()
  if self.dir and self.dir:match("^/tmp/leadership%-consul") then
    os.execute("rm -rf " .. H.quote(self.dir))
  end
end

return C
