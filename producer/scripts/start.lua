-- start: a consumer read entries; move each one's job `queued -> running` under a new attempt.
-- An entry whose job already ended (or was cancelled, or re-queued under a newer entry) is
-- acknowledged and skipped: a re-delivered finished job is never run twice.
-- Takes a batch of entries, so a consumer's fetch costs one script call rather than one per
-- job; each job's change is whole and checked on its own, as if it had its own call.
-- KEYS[1] jobs stream  KEYS[2] events stream
-- KEYS[1+2i] job hash  KEYS[2+2i] job events stream, for the i-th entry (i = 1..n)
-- ARGV[5] consumer name  ARGV[5+i] the i-th entry id
-- Returns, per entry in order, {'started', attempt, type, payload, timeout_s} or
-- {'skipped', reason}.
--@include common

local consumer = ARGV[5]
local now = tostring(now_ms())
local started_data = cjson.encode({owner = consumer})

local function start(job_key, job_events_key, entry_id)
  local j = redis.call('HMGET', job_key, 'status', 'entry_id', 'type', 'payload', 'timeout_s',
    'attempt', 'id', 'queue', 'tenant')
  local status = j[1]
  if not status then
    end_delivery(KEYS[1], entry_id)
    return {'skipped', 'missing'}
  end
  if j[2] ~= entry_id then
    -- The job was re-queued under a newer entry (manual retry, backoff): this one is spent.
    end_delivery(KEYS[1], entry_id)
    return {'skipped', 'stale'}
  end
  if status ~= 'queued' then
    if TERMINAL[status] then end_delivery(KEYS[1], entry_id) end
    return {'skipped', status}
  end
  check_transition(status, 'running')

  local attempt = (tonumber(j[6]) or 0) + 1
  local job = {j[7], j[8], j[3], j[9], 'running', string.format('%d', attempt)}
  local id = append_event(KEYS[2], job_events_key, 'job.started', started_data, job, now)
  redis.call('HSET', job_key, 'status', 'running', 'attempt', job[6], 'owner', consumer,
    'started_at', now, 'updated_at', now, 'stage', '', 'progress', '0', 'message', '',
    'last_event_id', id)
  return {'started', attempt, j[3], j[4], j[5]}
end

local results = {}
for i = 1, #ARGV - 5 do
  results[i] = start(KEYS[1 + 2 * i], KEYS[2 + 2 * i], ARGV[5 + i])
end
return results
