-- The rock: `luarocks make` into a fresh tree, then a plain lua5.4 loads
-- the module from there (and only there).
describe("the rock", function()
  it("installs with luarocks make and loads in a plain lua5.4", function()
    if not H.have("luarocks-5.4", pending) then return end
    local tree = H.tmpdir("rock")
    local log = tree .. "/luarocks.log"
    local ok = os.execute(("luarocks-5.4 make --tree %s --deps-mode none leadership-scm-1.rockspec >%s 2>&1")
      :format(H.quote(tree), H.quote(log)))
    assert.is_true(ok, H.read(log))
    local out = H.sh(([[cd /tmp && LUA_PATH='%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua;/usr/share/lua/5.4/?.lua' ]] ..
      [[LUA_CPATH='%s/lib/lua/5.4/?.so;/usr/lib/x86_64-linux-gnu/lua/5.4/?.so' lua5.4 -e ']] ..
      [[local L = require "leadership"; local s = assert(L.store("memory://rock")); ]] ..
      [[local c = L.candidate(s, "k", "v"); c:run(); L.sleep(0.05); print(c:is_leader(), package.searchpath("leadership.core", package.cpath)); c:stop()' 2>&1]])
      :format(tree, tree, tree))
    assert.truthy(out:match("^true%s+" .. tree:gsub("%p", "%%%0") .. "/lib/lua/5.4/leadership/core.so"), out)
    assert.truthy(H.read(tree .. "/bin/leadership") ~= nil, "the executable is installed too")
    os.execute("rm -rf " .. H.quote(tree))
  end)
end)
