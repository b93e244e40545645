-- child_ended: one of a parent's children has ended; run on the parent's slot by whoever
-- carries the child's `child_ended` flow task (at least once, perhaps twice: the child's
-- record in the parent's children hash turns from `pending` to its status here, once, so a
-- repeated task changes nothing). The parent's last child releases it, `waiting -> queued`,
-- exactly once. A child that failed (or was cancelled) fails a parent whose policy is
-- `fail`, at once, dead-lettered like any failed job; this script then writes a
-- `cancel_children` flow task for the parent's other unfinished children.
-- A parent that already ended (cancelled, failed) only records the child: no event follows
-- a terminal one.
-- KEYS[1] jobs stream  KEYS[2] events stream  KEYS[3] parent hash  KEYS[4] parent events
-- KEYS[5] children hash  KEYS[6] flow stream  KEYS[7] dead-letter stream
-- KEYS[8] waiting parents zset
-- ARGV[5] child id  ARGV[6] the child's terminal status  ARGV[7] the child's error
-- Returns {'unknown'}, {'duplicate'}, {'recorded'}, {'released'} or {'failed'}.
--@include common
--@include dead_letter

local child_id, child_status = ARGV[5], ARGV[6]
local raw = redis.call('HGET', KEYS[5], child_id)
if not raw then return {'unknown'} end  -- not its child, or the parent expired long ago
local child = cjson.decode(raw)
if child.status ~= 'pending' then return {'duplicate'} end
child.status = child_status
redis.call('HSET', KEYS[5], child_id, cjson.encode(child))
local pending = redis.call('HINCRBY', KEYS[3], 'children_pending', -1)
redis.call('HINCRBY', KEYS[3], 'children_' .. child_status, 1)

local p = redis.call('HMGET', KEYS[3], 'status', 'on_child_failure', 'id', 'type', 'attempt')
if p[1] ~= WAITING then return {'recorded'} end
local now = tostring(now_ms())
redis.call('HSET', KEYS[3], 'updated_at', now)
emit(KEYS[2], KEYS[3], KEYS[4], JOB_CHILD_ENDED, {child_id = child_id, status = child_status})

if child_status ~= SUCCEEDED and p[2] ~= 'continue' then
  check_transition(WAITING, FAILED)
  redis.call('ZREM', KEYS[8], p[3])
  local text = 'child ' .. child_id .. ' ' .. child_status
  if ARGV[7] ~= '' then text = text .. ': ' .. ARGV[7] end
  if pending > 0 then
    redis.call('XADD', KEYS[6], '*', 'task', TASK_CANCEL_CHILDREN, 'parent_id', p[3],
      'reason', 'cancelled: its parent failed with ' .. text)
  end
  dead_letter(KEYS[2], KEYS[3], KEYS[4], KEYS[7], text, 'child_failed', {child_id = child_id})
  return {FAILED}
end

if pending > 0 then return {'recorded'} end
check_transition(WAITING, QUEUED)
redis.call('ZREM', KEYS[8], p[3])
redis.call('HSET', KEYS[3], 'status', QUEUED)
enqueue(KEYS[1], KEYS[3], p[3], p[4], p[5])
emit(KEYS[2], KEYS[3], KEYS[4], JOB_QUEUED, {children_ended = true})
return {'released'}
