-- promote: move due jobs from the delayed set to the jobs stream. ZREM decides who moves an
-- id, inside one script, so many workers promoting at once never enqueue a job twice.
-- Job keys are built from ARGV[6]; they share the queue's hash tag, so the same slot.
-- KEYS[1] delayed zset  KEYS[2] jobs stream  KEYS[3] events stream
-- ARGV[5] max ids to move  ARGV[6] job key prefix
-- Returns {moved, next_due_ms or -1}.
--@include common

local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
local moved = 0
for _, job_id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], job_id)
  local job_key = ARGV[6] .. job_id
  local j = redis.call('HMGET', job_key, 'status', 'type', 'attempt')
  if j[1] == SCHEDULED then
    check_transition(SCHEDULED, QUEUED)
    redis.call('HSET', job_key, 'status', QUEUED, 'due_at', '', 'updated_at', tostring(now))
    enqueue(KEYS[2], job_key, job_id, j[2], j[3])
    emit(KEYS[3], job_key, job_key .. JOB_EVENTS_SUFFIX, JOB_QUEUED, {})
    moved = moved + 1
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return {moved, -1} end
return {moved, tonumber(nxt[2])}
