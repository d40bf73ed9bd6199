-- wrk script for the hit path: every request asks for one of N users, picked
-- at random per request, so the cache is probed across N keys rather than one.
-- The requests are formatted once in init(): per-request Lua string building
-- would make wrk, not the server, the bottleneck.
--
--   wrk ... -s pick-user.lua URL -- USERS PREFIX
--
-- done() prints one machine-readable line that tests/bench/bench.py parses:
-- latencies in microseconds, straight from wrk's histogram.

local reqs = {}
local n = 0
local threads = 0

function setup(thread)
   thread:set("id", threads)
   threads = threads + 1
end

function init(args)
   n = tonumber(args[1] or "10000")
   local prefix = args[2] or "bench-hit-"
   for i = 1, n do
      reqs[i] = wrk.format("GET", "/v1/token?user_id=" .. prefix .. (i - 1))
   end
   -- a different sequence per wrk thread, the same across runs
   math.randomseed(12345 + (id or 0))
end

function request()
   return reqs[math.random(n)]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d bytes=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
      "connect=%d read=%d write=%d timeout=%d status=%d\n",
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.timeout, e.status))
end
