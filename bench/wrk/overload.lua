-- wrk script for the overload curve (bench/overload.py). Each request carries its own
-- X-Request-ID; Berth echoes it on every answer, 503s included, so each response is matched
-- to its request and timed by status: admitted (2xx) apart from refused (503). Prints one
-- JSON line at the end.
--   BENCH_METHOD=POST  sends POST /api/items with a unique item name per request
--   BENCH_RUN          a prefix that keeps ids and names unique across runs
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clock, bench_timespec *now);
]]
local CLOCK_MONOTONIC = 1
local clock = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1000000 + tonumber(clock.tv_nsec) / 1000
end

local threads = {}
local method = os.getenv("BENCH_METHOD") or "GET"
local run = os.getenv("BENCH_RUN") or tostring(os.time())

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  started = {}
  admitted = {}
  refused = {}
  other = 0
  unmatched = 0
  no_retry_after = 0
  if method == "POST" then
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
  end
end

function request()
  counter = counter + 1
  local request_id = string.format("%s-%d-%d", run, id, counter)
  wrk.headers["X-Request-ID"] = request_id
  started[request_id] = now_us()
  if method ~= "POST" then
    return wrk.format()
  end
  local body = string.format('{"name":"o-%s","price":"9.95"}', request_id)
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  local request_id = headers["X-Request-Id"] or headers["x-request-id"]
  local began = request_id and started[request_id]
  if not began then
    unmatched = unmatched + 1
    return
  end
  started[request_id] = nil
  local elapsed = now_us() - began
  if status >= 200 and status < 300 then
    table.insert(admitted, elapsed)
  elseif status == 503 then
    table.insert(refused, elapsed)
    if not (headers["Retry-After"] or headers["retry-after"]) then
      no_retry_after = no_retry_after + 1
    end
  else
    other = other + 1
  end
end

local function percentile(sorted, p)
  if #sorted == 0 then return 0 end
  local index = math.max(1, math.ceil(#sorted * p / 100))
  return sorted[index]
end

local function gather(name)
  local all = {}
  for _, thread in ipairs(threads) do
    for _, value in ipairs(thread:get(name)) do table.insert(all, value) end
  end
  table.sort(all)
  return all
end

local function stats(sorted)
  return string.format('{"count":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}', #sorted,
    percentile(sorted, 50), percentile(sorted, 99), sorted[#sorted] or 0)
end

function done(summary, latency, requests)
  local other_total, unmatched_total, missing_total = 0, 0, 0
  for _, thread in ipairs(threads) do
    other_total = other_total + thread:get("other")
    unmatched_total = unmatched_total + thread:get("unmatched")
    missing_total = missing_total + thread:get("no_retry_after")
  end
  local errors = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_timeout":%d,"other_status":%d,"unmatched":%d,' ..
    '"refused_without_retry_after":%d,"admitted":%s,"refused":%s}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write,
    errors.timeout, other_total, unmatched_total, missing_total,
    stats(gather("admitted")), stats(gather("refused"))))
end
