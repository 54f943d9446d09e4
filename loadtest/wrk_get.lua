-- wrk script: GET the paths of a file (one per line, e.g. /profile/u1?k=50) in turn, each connection a
-- closed loop; `done` prints the same "WRK_JSON {...}" line as wrk_post.lua.
--
--   wrk -t1 -c16 -d10s --timeout 5s -s loadtest/wrk_get.lua http://127.0.0.1:8000 -- PATHS.txt

local paths = {}
local next_path = 1

function init(args)
  local file = args[1]
  if file == nil then
    error("usage: wrk ... -s wrk_get.lua URL -- PATHS.txt")
  end
  for line in io.lines(file) do
    if #line > 0 then
      paths[#paths + 1] = line
    end
  end
  if #paths == 0 then
    error("no paths in " .. file)
  end
end

function request()
  local path = paths[next_path]
  next_path = next_path % #paths + 1
  return wrk.format("GET", path)
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
