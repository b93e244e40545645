-- wrk script for bench.http_submit: POST one noop job per request, and print the run's
-- figures as one line that bench.http_submit parses (latencies in microseconds).
-- The API key comes from the environment (BENCH_API_KEY); with BENCH_BULK=N, each request
-- is a bulk submit's body of N noop jobs instead (for POST /v1/jobs/bulk).
local job = '{"type":"noop","payload":{"n":1}}'
local bulk = tonumber(os.getenv("BENCH_BULK") or "")
wrk.method = "POST"
if bulk then
  local jobs = {}
  for i = 1, bulk do jobs[i] = job end
  wrk.body = '{"jobs":[' .. table.concat(jobs, ",") .. ']}'
else
  wrk.body = job
end
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_API_KEY") or "bench-key")

function done(summary, latency, requests)
  io.write(string.format(
    "WRK requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d non2xx=%d errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout))
end
