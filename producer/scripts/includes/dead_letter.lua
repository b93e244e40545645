-- Give up on a job: `failed`, an entry in the dead-letter stream, and the job.failed event
-- carrying the reason, in one step, so no browser waits forever for a job nobody runs.
local function dead_letter(events_key, job_key, job_events_key, dead_key, error_text, reason, extra)
  local now = tostring(now_ms())
  redis.call('HSET', job_key, 'status', 'failed', 'error', error_text, 'finished_at', now,
    'updated_at', now)
  local j = redis.call('HMGET', job_key, 'id', 'type', 'attempt')
  redis.call('XADD', dead_key, '*', 'job_id', j[1], 'type', j[2], 'error', error_text,
    'attempts', j[3], 'reason', reason)
  local data = {error = error_text, reason = reason, attempts = tonumber(j[3]), dead_lettered = true}
  for k, v in pairs(extra) do data[k] = v end
  emit(events_key, job_key, job_events_key, 'job.failed', data)
  expire_finished(job_key, job_events_key)
end
