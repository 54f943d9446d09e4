-- wrk script: POST /profile with request bodies from a JSON-lines file, each connection a closed loop.
--
--   wrk -t1 -c16 -d10s --timeout 5s -s loadtest/wrk_post.lua http://127.0.0.1:8000/profile -- BODIES.jsonl
--
-- `done` prints one line "WRK_JSON {...}": request and error counts, and the latency histogram as
-- [microseconds, count] pairs, so that loadtest.measure computes the percentiles the same way as
-- for every other load generator.

local bodies = {}
local next_body = 1

function init(args)
  local path = args[1]
  if path == nil then
    error("usage: wrk ... -s wrk_post.lua URL -- BODIES.jsonl")
  end
  for line in io.lines(path) do
    if #line > 0 then
      bodies[#bodies + 1] = line
    end
  end
  if #bodies == 0 then
    error("no request bodies in " .. path)
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  local body = bodies[next_body]
  next_body = next_body % #bodies + 1
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  local hist = {}
  for i = 1, #latency do
    local us, count = latency(i)
    hist[#hist + 1] = string.format("[%d, %d]", us, count)
  end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "seconds": %.3f, "errors": {"connect": %d, "read": %d, "write": %d, '
      .. '"status": %d, "timeout": %d}, "latency_us": [%s]}\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(hist, ", ")
  ))
end
