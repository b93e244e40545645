-- Give up on a job: `failed`, an entry in the dead-letter stream, and the job.failed event
-- carrying the reason, in one step, so no browser waits forever for a job nobody runs.
-- Dead-letter entries live as long as the failed jobs they name (RETENTION_S): older ones
-- are trimmed here, exactly (dead-lettering is rare), so the stream stays bounded.
local function dead_letter(events_key, job_key, job_events_key, dead_key, error_text, reason, extra)
  local now_n = now_ms()
  local now = string.format('%d', now_n)
  redis.call('HSET', job_key, 'status', FAILED, 'error', error_text, 'finished_at', now,
    'updated_at', now)
  local j = redis.call('HMGET', job_key, 'id', 'type', 'attempt')
  redis.call('XADD', dead_key, 'MINID', string.format('%d', now_n - RETENTION_S * 1000), '*',
    'job_id', j[1], 'type', j[2], 'error', error_text, 'attempts', j[3], 'reason', reason)
  local data = {error = error_text, reason = reason, attempts = tonumber(j[3]), dead_lettered = true}
  for k, v in pairs(extra) do data[k] = v end
  emit(events_key, job_key, job_events_key, JOB_FAILED, data)
  job_ended(job_key, job_events_key, FAILED)
end
