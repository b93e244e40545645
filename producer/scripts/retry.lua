-- retry: a user re-runs a `failed` or `cancelled` job: `-> queued` with a fresh budget of
-- attempts (the attempt counter keeps growing: it is the fencing token). Its recorded steps
-- are kept, so it resumes after the last one, unless ARGV[5] asks to run from the start.
-- KEYS[1] jobs stream  KEYS[2] events stream  KEYS[3] job hash  KEYS[4] job events stream
-- KEYS[5] steps hash  KEYS[6] children hash
-- ARGV[5] '1': forget the recorded steps
-- Returns {'queued'}, {'missing'} or {'refused', status}.
--@include common

local j = redis.call('HMGET', KEYS[3], 'status', 'id', 'type', 'attempt', 'idem_key')
local status = j[1]
if not status then return {'missing'} end
-- Only an ended job is re-run by hand (`scheduled -> queued` is the promoter's move).
if not (TERMINAL[status] and allowed(status, QUEUED)) then return {'refused', status} end

redis.call('PERSIST', KEYS[3])
redis.call('PERSIST', KEYS[4])
redis.call('PERSIST', KEYS[6])
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[5])
  redis.call('HSET', KEYS[3], 'steps', '')
else
  redis.call('PERSIST', KEYS[5])
end
if j[5] and j[5] ~= '' then redis.call('PERSIST', j[5]) end
redis.call('HSET', KEYS[3], 'status', QUEUED, 'attempt_floor', j[4], 'cancel_requested', '0',
  'error', '', 'result', '', 'stage', '', 'progress', '0', 'message', '', 'finished_at', '',
  'updated_at', tostring(now_ms()))
enqueue(KEYS[1], KEYS[3], j[2], j[3], j[4])
emit(KEYS[2], KEYS[3], KEYS[4], JOB_QUEUED, {manual_retry = true, from_start = ARGV[5] == '1'})
return {QUEUED}
