-- wrk script: POST /profile at a fixed request rate, for a tail-latency cross-check of locust.
--
--   wrk -t2 -c16 -d30s --timeout 5s -s loadtest/wrk_fixed_rate.lua http://127.0.0.1:8000/profile \
--       -- RATE THREADS BODIES.jsonl
--
-- Debian's wrk (4.1) is closed-loop: a connection sends its next request when the previous answer
-- is in. Its Lua `delay()` hook, called before every request, returns how many milliseconds to
-- wait first; here each thread keeps a timeline of send slots RATE/THREADS per second apart and
-- every request takes the next free slot, so the offered load is RATE requests/s whenever a
-- connection is free at its slot. Two limits, unlike wrk2: (1) latency is measured from the
-- actual send, so when the service falls behind, the time a request waited for a free connection
-- is not counted (coordinated omission is not corrected); (2) a thread that falls more than one
-- slot behind drops the missed slots rather than bursting to catch up. The achieved rate is
-- printed next to the target: when it is below, the service (or 16 connections) could not keep up
-- and the latency figures understate the wait.
--
-- BODIES.jsonl: one complete request body per line, sent in turn. `done` prints one line
-- "WRK_JSON {...}" with the latency percentiles (ms), request and error counts, and the rates.

local ffi = require("ffi")
ffi.cdef [[
typedef long time_t;
typedef struct timespec { time_t tv_sec; long tv_nsec; } timespec;
int clock_gettime(int clk_id, struct timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local rate, threads = 100, 1
local bodies = {}
local next_body = 1
local interval, next_slot = 10, nil

function init(args)
  rate = tonumber(args[1]) or rate
  threads = tonumber(args[2]) or threads
  local path = args[3]
  if path == nil then
    error("usage: wrk ... -s wrk_fixed_rate.lua URL -- RATE THREADS BODIES.jsonl")
  end
  for line in io.lines(path) do
    if #line > 0 then
      bodies[#bodies + 1] = line
    end
  end
  if #bodies == 0 then
    error("no request bodies in " .. path)
  end
  interval = 1000 * threads / rate
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function delay()
  local t = now_ms()
  if next_slot == nil or next_slot < t - interval then
    next_slot = t -- start, or fell behind by more than a slot: do not burst to catch up
  end
  local wait = next_slot - t
  next_slot = next_slot + interval
  if wait < 0 then
    return 0
  end
  return wait
end

function request()
  local body = bodies[next_body]
  next_body = next_body % #bodies + 1
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  local out = string.format(
    '{"target_rate": %.1f, "requests": %d, "seconds": %.3f, "achieved_rate": %.1f, '
      .. '"p50_ms": %.3f, "p90_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f, "p999_ms": %.3f, "max_ms": %.3f, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}',
    rate, summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.status, e.timeout
  )
  io.write("WRK_JSON " .. out .. "\n")
end

-- UTPM_WRK_CLOSED_LOOP=1: no pacing at all (each connection sends as soon as its answer is in).
-- wrk decides when it loads the script whether a `delay` hook exists; even one that returns 0
-- routes every request through a timer, which measurably slowed a closed loop (`utpm bench tune`).
if os.getenv("UTPM_WRK_CLOSED_LOOP") == "1" then
  delay = nil
end
