-- Start one read entry's job, `queued -> running` under a new attempt owned by `consumer`:
-- the body of both `start` (entries the consumer read itself) and `take` (entries read in
-- the script). An entry whose job already ended (or was cancelled, or re-queued under a newer
-- entry) is acknowledged and skipped: a re-delivered finished job is never run twice.
-- Returns {'started', attempt, type, payload, timeout_s, children} or {'skipped', reason};
-- `children` is a parent's count of children (false for a job without). A consumer that
-- traces asks for the job's trace context too (`traced`): then a seventh element, the
-- job's `trace` (false for none). Only then, so that a consumer that does not trace reads no
-- more than before (one more HMGET field costs each job 1.1% more of Redis's instructions).
local function start_job(jobs_key, events_key, job_key, job_events_key, entry_id, consumer, now,
    traced)
  local j = redis.call('HMGET', job_key, 'status', 'entry_id', 'type', 'payload', 'timeout_s',
    'attempt', 'id', 'queue', 'tenant', 'children')
  local status = j[1]
  if not status then
    end_delivery(jobs_key, entry_id)
    return {'skipped', 'missing'}
  end
  if j[2] ~= entry_id then
    -- The job was re-queued under a newer entry (manual retry, backoff): this one is spent.
    end_delivery(jobs_key, entry_id)
    return {'skipped', 'stale'}
  end
  if status ~= QUEUED then
    if TERMINAL[status] then end_delivery(jobs_key, entry_id) end
    return {'skipped', status}
  end
  check_transition(status, RUNNING)

  local attempt = (tonumber(j[6]) or 0) + 1
  local job = {j[7], j[8], j[3], j[9], RUNNING, string.format('%d', attempt)}
  local data = '{"owner":' .. cjson.encode(consumer) .. '}'
  local id = append_event(events_key, job_events_key, JOB_STARTED, data, job, now)
  redis.call('HSET', job_key, 'status', RUNNING, 'attempt', job[6], 'owner', consumer,
    'started_at', now, 'updated_at', now, 'last_event_id', id)
  if attempt > 1 then  -- a retry: the earlier attempt's progress is not this one's
    redis.call('HSET', job_key, 'stage', '', 'progress', '0', 'message', '')
  end
  local started = {'started', attempt, j[3], j[4], j[5], j[10]}
  if traced then started[7] = redis.call('HGET', job_key, 'trace') end
  return started
end
