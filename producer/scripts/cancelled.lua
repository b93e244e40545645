-- cancelled: the worker stopped a running job's handler (after a cancel request, once the
-- handler cleaned up): `running -> cancelled`; ends the delivery.
-- KEYS[1] jobs stream  KEYS[2] events stream  KEYS[3] job hash  KEYS[4] job events stream
-- ARGV[5] entry id  ARGV[6] attempt (fencing)  ARGV[7] reason
-- Returns 1, or 0 when the attempt no longer holds the job.
--@include common

if not holds_lease(KEYS[3], ARGV[6]) then return 0 end
check_transition(RUNNING, CANCELLED)
local now = tostring(now_ms())
redis.call('HSET', KEYS[3], 'status', CANCELLED, 'error', ARGV[7], 'finished_at', now,
  'updated_at', now)
end_delivery(KEYS[1], ARGV[5])
emit(KEYS[2], KEYS[3], KEYS[4], JOB_CANCELLED, {reason = ARGV[7]})
job_ended(KEYS[3], KEYS[4], CANCELLED)
return 1
