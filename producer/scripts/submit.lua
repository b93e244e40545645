-- submit: create a job, `queued` (appended to the jobs stream) or `scheduled` (delayed set).
-- KEYS[1] jobs stream      KEYS[2] events stream   KEYS[3] job hash   KEYS[4] job events stream
-- KEYS[5] delayed zset     KEYS[6] idempotency key ('' semantics: ARGV[14] == '0')
-- KEYS[7] tenant's job index zset
-- ARGV[5] job_id  ARGV[6] queue  ARGV[7] type  ARGV[8] tenant  ARGV[9] payload JSON
-- ARGV[10] max_attempts  ARGV[11] timeout_s  ARGV[12] delay_ms  ARGV[13] job key prefix
-- ARGV[14] '1' if an Idempotency-Key was given
-- Returns {1, job_id} when created, {0, existing_job_id} for a repeated Idempotency-Key.
--@include common

local job_id, queue, job_type, tenant = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local delay_ms = tonumber(ARGV[12])

if ARGV[14] == '1' then
  local existing = redis.call('GET', KEYS[6])
  if existing and redis.call('EXISTS', ARGV[13] .. existing) == 1 then
    return {0, existing}
  end
  redis.call('SET', KEYS[6], job_id)
end

local now = now_ms()
local status = 'queued'
if delay_ms > 0 then status = 'scheduled' end

redis.call('HSET', KEYS[3],
  'id', job_id, 'queue', queue, 'type', job_type, 'tenant', tenant, 'status', status,
  'payload', ARGV[9], 'attempt', '0', 'attempt_floor', '0', 'max_attempts', ARGV[10],
  'timeout_s', ARGV[11], 'progress', '0', 'cancel_requested', '0',
  'created_at', tostring(now), 'updated_at', tostring(now),
  'idem_key', (ARGV[14] == '1') and KEYS[6] or '')
redis.call('ZADD', KEYS[7], now, job_id)
-- The index outlives no job: ids older than the retention have expired hashes.
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now - RETENTION_S * 1000)

if status == 'scheduled' then
  local due = now + delay_ms
  redis.call('ZADD', KEYS[5], due, job_id)
  redis.call('HSET', KEYS[3], 'due_at', tostring(due))
  emit(KEYS[2], KEYS[3], KEYS[4], 'job.scheduled', {due_at = due})
else
  enqueue(KEYS[1], KEYS[3], job_id, job_type, 0)
  emit(KEYS[2], KEYS[3], KEYS[4], 'job.queued', {})
end
return {1, job_id}
