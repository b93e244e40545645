-- start: a consumer read an entry; move its job `queued -> running` under a new attempt.
-- An entry whose job already ended (or was cancelled, or re-queued under a newer entry) is
-- acknowledged and skipped: a re-delivered finished job is never run twice.
-- KEYS[1] jobs stream  KEYS[2] events stream  KEYS[3] job hash  KEYS[4] job events stream
-- ARGV[5] entry id  ARGV[6] consumer name
-- Returns {'started', attempt, type, payload, timeout_s} or {'skipped', reason}.
--@include common

local entry_id, consumer = ARGV[5], ARGV[6]
local j = redis.call('HMGET', KEYS[3], 'status', 'entry_id', 'type', 'payload', 'timeout_s')
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

local now = tostring(now_ms())
local attempt = redis.call('HINCRBY', KEYS[3], 'attempt', 1)
redis.call('HSET', KEYS[3], 'status', 'running', 'owner', consumer, 'started_at', now,
  'updated_at', now, 'stage', '', 'progress', '0', 'message', '')
emit(KEYS[2], KEYS[3], KEYS[4], 'job.started', {owner = consumer})
return {'started', attempt, j[3], j[4], j[5]}
