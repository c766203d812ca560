-- The libFuzzer targets (spec/fuzz, built by `make fuzz-build` into
-- build-fuzz, or $FUZZ_BUILD) run once over their seeds and over every
-- input that once crashed them (spec/fuzz/regressions/<target>): a fixed
-- bug that comes back fails here. No fuzzing: that is `make fuzz`.
local dir = os.getenv("FUZZ_BUILD") or "build-fuzz"

describe("fuzz targets", function()
  local targets = {}
  for name in H.sh("ls spec/fuzz/fuzz_*.c 2>/dev/null"):gmatch("spec/fuzz/(fuzz_[%w_]+)%.c") do
    targets[#targets + 1] = name
  end

  for _, target in ipairs(targets) do
    it(target .. " passes its seeds and regressions", function()
      local bin = dir .. "/" .. target
      if not H.read(bin) then
        if os.getenv("CI") then error(bin .. " is not built: run `make fuzz-build` first") end
        io.stderr:write("\n*** SKIPPED " .. target .. ": " .. bin .. " is not built (make fuzz-build) ***\n")
        pending(bin .. " is not built: SKIPPED")
        return
      end
      local inputs = { "spec/fuzz/corpus/" .. target }
      if H.sh("ls -d spec/fuzz/regressions/" .. target .. " 2>/dev/null") ~= "" then
        inputs[#inputs + 1] = "spec/fuzz/regressions/" .. target
      end
      -- the sanitizer runtime is the target's own: no preload from `make asan test`
      local out = H.sh(("env -u LD_PRELOAD %s -runs=0 %s 2>&1; echo rc=$?"):format(H.quote(bin),
        table.concat(inputs, " ")))
      assert.truthy(out:match("rc=0%s*$"), out:sub(-3000))
    end)
  end
end)

-- What the fuzzers found, as plain specs that need no fuzz build.
describe("fuzz regressions", function()
  local L = require "leadership"

  it("a password holding '@' is redacted whole (fuzz_config)", function()
    local s = L.store("etcd://user:hunter2@secret@127.0.0.1:2379")
    assert.is_nil(tostring(s):find("secret", 1, true), tostring(s))
    assert.is_nil(tostring(s):find("hunter2", 1, true), tostring(s))
    local ok, err = pcall(L.store, "etcd://user:hunter2@secret@127.0.0.1:99999")
    assert.is_false(ok)
    assert.is_nil(tostring(err):find("secret", 1, true), err)
  end)

  it("a host name longer than a DNS name is refused, not a crash (fuzz_config)", function()
    local ok, err = pcall(L.store, "redis://" .. ("h"):rep(300) .. ":6379")
    assert.is_false(ok)
    assert.truthy(tostring(err):match("host name too long"), err)
  end)

  it("an unknown policy field with pattern characters is reported (fuzz_policy)", function()
    local path = H.tmpdir("fuzzreg") .. "/policy.lua"
    H.write(path, 'return {\n  store = "file:///tmp/x",\n  key = "k",\n  ["tt)l"] = 5,\n}\n')
    local spec, err = require("leadership.policy").read(path)
    assert.is_nil(spec)
    assert.truthy(err:match("unknown field 'tt%)l'"), err)
  end)
end)
