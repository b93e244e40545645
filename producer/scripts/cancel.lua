-- cancel: a user asks to cancel. `scheduled`/`queued`/`waiting` end `cancelled` at once; a
-- `running` job gets `cancel_requested` and its worker stops the handler, then calls
-- `cancelled`. A `waiting` parent's unfinished children are cancelled by a `cancel_children`
-- flow task written here (they may live in other slots): the caller carries it out at once,
-- and the queue's workers again should the caller stop half-way.
-- KEYS[1] jobs stream  KEYS[2] events stream  KEYS[3] job hash  KEYS[4] job events stream
-- KEYS[5] delayed zset  KEYS[6] flow stream  KEYS[7] waiting parents zset
-- ARGV[5] reason
-- Returns {'cancelled', 1 if its children are to be cancelled else 0}, {'requested'},
-- {'missing'} or {'refused', status}.
--@include common

local j = redis.call('HMGET', KEYS[3], 'status', 'entry_id', 'id', 'cancel_requested')
local status = j[1]
if not status then return {'missing'} end

if status == RUNNING then
  if j[4] ~= '1' then
    redis.call('HSET', KEYS[3], 'cancel_requested', '1', 'updated_at', tostring(now_ms()))
    emit(KEYS[2], KEYS[3], KEYS[4], JOB_CANCEL_REQUESTED, {reason = ARGV[5]})
  end
  return {'requested'}
end
if not allowed(status, CANCELLED) then return {'refused', status} end

if status == SCHEDULED then
  redis.call('ZREM', KEYS[5], j[3])
elseif status == WAITING then
  redis.call('ZREM', KEYS[7], j[3])
  redis.call('XADD', KEYS[6], '*', 'task', TASK_CANCEL_CHILDREN, 'parent_id', j[3],
    'reason', ARGV[5])
else
  -- Not yet delivered: deleting the entry means no consumer ever sees it. Delivered but not
  -- started: its consumer's start finds the job cancelled and skips it. Waiting in the
  -- ordered backlog, or at a gate: it leaves them.
  end_delivery(KEYS[1], j[2])
  redis.call('ZREM', job_base(KEYS[3], j[3]) .. BACKLOG_SUFFIX, j[3])
  leave_gates(KEYS[3], j[3])
end
local now = tostring(now_ms())
redis.call('HSET', KEYS[3], 'status', CANCELLED, 'error', ARGV[5], 'finished_at', now,
  'updated_at', now)
emit(KEYS[2], KEYS[3], KEYS[4], JOB_CANCELLED, {reason = ARGV[5]})
job_ended(KEYS[3], KEYS[4], CANCELLED)
return {CANCELLED, status == WAITING and 1 or 0}
