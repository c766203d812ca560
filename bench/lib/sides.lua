-- The two implementations under test, as command lines: ours (the
-- `leadership` executable with bench/policies, and bench/many.lua on the
-- Lua module) and docker/leadership (bench/peers/docker-leadership, built
-- from Debian's package). Both print the lines of bench/policies/say.lua.
local S = {}

function S.new(build, peer_bin, lua)
  local ours = { name = "ours", label = "leadership" }
  function ours.candidate(url, key, node, ttl)
    return { build .. "/leadership", "run", "bench/policies/candidate.lua",
      "--store", url, "--key", key, "--node", node, "--ttl", tostring(ttl), "--log-level", "warn" }
  end
  function ours.follower(url, key)
    return { build .. "/leadership", "run", "bench/policies/follower.lua",
      "--store", url, "--key", key, "--node", "follower", "--log-level", "warn" }
  end
  function ours.many(url, prefix, n, ttl)
    return { lua, "bench/many.lua", url, prefix, tostring(n), tostring(ttl) }
  end
  ours.env = {
    LUA_PATH = build .. "/lua/?.lua;" .. build .. "/lua/?/init.lua;./?.lua;;",
    LUA_CPATH = build .. "/lua/?.so;;",
  }

  local peer = { name = "peer", label = "docker/leadership", env = {} }
  function peer.candidate(url, key, node, ttl)
    return { peer_bin, "-mode", "candidate", "-store", url, "-key", key, "-node", node, "-ttl", ttl .. "s" }
  end
  function peer.follower(url, key)
    return { peer_bin, "-mode", "follower", "-store", url, "-key", key }
  end
  function peer.many(url, prefix, n, ttl)
    return { peer_bin, "-mode", "many", "-store", url, "-key", prefix, "-node", "peer", "-n", tostring(n), "-ttl", ttl .. "s" }
  end
  return { ours, peer }
end

return S
