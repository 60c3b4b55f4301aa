-- Shared by every bench script (tests/bench/wrk.py puts it in front of the operation's own
-- script): numbers each thread, counts the responses by status in each thread, and prints
-- one line `BENCH_RESULT {json}` when the run is done, for tests/bench/wrk.py to parse.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

statuses = {}
-- Requests that had to reuse a prepared object (set_state_start.lua); 0 for the others.
reused = 0

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

json_headers = { ["Content-Type"] = "application/json" }

-- Escapes a string for a JSON document (quotes, backslashes and control characters).
function json_string(text)
  local escaped = text:gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", c:byte())
  end)
  return '"' .. escaped .. '"'
end

-- A prefix no other thread, repetition or run uses: the run's argument, the thread's number
-- and random digits.
function unique_prefix(run_prefix)
  math.randomseed(os.time() * 1000 + (thread_number or 0))
  return string.format("%s-t%d-%06d", run_prefix, thread_number or 0, math.random(0, 999999))
end

function done(summary, latency, requests)
  local totals = {}
  local reused_total = 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      totals[status] = (totals[status] or 0) + count
    end
    reused_total = reused_total + thread:get("reused")
  end
  local counts = {}
  for status, count in pairs(totals) do
    table.insert(counts, string.format('"%d":%d', status, count))
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"duration_us":%d,"requests":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},'
      .. '"latency_us":{"min":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d},'
      .. '"statuses":{%s},"reused":%d}\n',
    summary.duration, summary.requests, summary.bytes,
    errors.connect, errors.read, errors.write, errors.timeout, errors.status,
    latency.min, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max,
    table.concat(counts, ","), reused_total))
end
