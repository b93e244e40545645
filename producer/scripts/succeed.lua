-- succeed: `running -> succeeded` with the handler's result and artifacts; ends the delivery.
-- Takes a batch of jobs, so a consumer's completions cost one script call rather than one per
-- job; each job's change is whole and fenced on its own, as if it had its own call.
-- KEYS[1] jobs stream  KEYS[2] events stream
-- KEYS[1+2i] job hash  KEYS[2+2i] job events stream, for the i-th job (i = 1..n)
-- ARGV[5i..5i+4], for the i-th job: entry id, attempt (fencing), result JSON, artifacts JSON,
-- the job.succeeded event's data (JSON)
-- Returns, per job in order, 1, or 0 when the attempt no longer holds the job (nothing is
-- written for it).
--@include common

local now = tostring(now_ms())
local ended = {}  -- entries whose delivery ends here, acknowledged and deleted together

local function succeed(job_key, job_events_key, entry_id, attempt, result, artifacts, data)
  local j = redis.call('HMGET', job_key, 'status', 'attempt', 'id', 'queue', 'type', 'tenant',
    'idem_key', 'on_end')
  -- The fencing check (`holds_lease`), from the fields read once for the whole change.
  if j[1] ~= RUNNING or j[2] ~= attempt then return 0 end
  check_transition(RUNNING, SUCCEEDED)
  table.insert(ended, entry_id)
  local job = {j[3], j[4], j[5], j[6], SUCCEEDED, j[2]}
  local id = append_event(KEYS[2], job_events_key, JOB_SUCCEEDED, data, job, now)
  redis.call('HSET', job_key, 'status', SUCCEEDED, 'result', result, 'artifacts', artifacts,
    'progress', '100', 'finished_at', now, 'updated_at', now, 'last_event_id', id)
  if attempt ~= '1' then redis.call('HSET', job_key, 'error', '') end  -- a retry's old error
  job_ended(job_key, job_events_key, SUCCEEDED, {j[7], j[8]}, true)
  return 1
end

local results = {}
for i = 1, (#ARGV - 4) / 5 do
  local a = 5 * i
  results[i] = succeed(KEYS[1 + 2 * i], KEYS[2 + 2 * i], ARGV[a], ARGV[a + 1], ARGV[a + 2],
    ARGV[a + 3], ARGV[a + 4])
end
end_deliveries(KEYS[1], ended)
if #ended > 0 then count_finished(KEYS[3], SUCCEEDED, #ended) end
return results
