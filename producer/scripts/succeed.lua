-- succeed: `running -> succeeded` with the handler's result and artifacts; ends the delivery.
-- KEYS[1] jobs stream  KEYS[2] events stream  KEYS[3] job hash  KEYS[4] job events stream
-- ARGV[5] entry id  ARGV[6] attempt (fencing)  ARGV[7] result JSON  ARGV[8] artifacts JSON
-- ARGV[9] the job.succeeded event's data, JSON
-- Returns 1, or 0 when the attempt no longer holds the job (nothing is written).
--@include common

if not holds_lease(KEYS[3], ARGV[6]) then return 0 end
check_transition('running', 'succeeded')
local now = tostring(now_ms())
redis.call('HSET', KEYS[3], 'status', 'succeeded', 'result', ARGV[7], 'artifacts', ARGV[8],
  'progress', '100', 'error', '', 'finished_at', now, 'updated_at', now)
end_delivery(KEYS[1], ARGV[5])
emit(KEYS[2], KEYS[3], KEYS[4], 'job.succeeded', ARGV[9])
expire_finished(KEYS[3], KEYS[4])
return 1
