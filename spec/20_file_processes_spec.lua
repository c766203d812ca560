-- file:// across processes: the demo's store, with spawned `leadership run`.
local C = require "cluster"

C.describe_processes(_ENV, "file", function() return "file://" .. H.tmpdir("filestore") end,
  { ttl = 2, kill9 = 0.1, pause = 4 })
