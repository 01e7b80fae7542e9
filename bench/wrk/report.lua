-- wrk script for Berth's benchmarks. Prints one JSON line at the end, so numbers are read
-- exactly rather than scraped from wrk's human-readable report.
--   BENCH_METHOD=POST  sends POST /api/items with a unique item name per request
--   BENCH_RUN          a prefix that keeps names unique across runs
local threads = {}
local method = os.getenv("BENCH_METHOD") or "GET"
local run = os.getenv("BENCH_RUN") or tostring(os.time())

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  if method == "POST" then
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
  end
end

function request()
  if method ~= "POST" then
    return wrk.format()
  end
  counter = counter + 1
  local body = string.format('{"name":"bench-%s-%d-%d","price":"9.95"}', run, id, counter)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, errors.connect, errors.read,
    errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
