-- reclaim: take over an entry whose consumer stopped renewing its lease (crashed, frozen,
-- partitioned). XCLAIM's min-idle guard makes this race-free: if the owner renewed, or
-- another consumer claimed first, nothing happens. The new attempt fences the old owner out.
-- An entry delivered more than max_deliveries times is poison: dead-lettered, job failed.
-- KEYS[1] jobs stream  KEYS[2] events stream  KEYS[3] job hash  KEYS[4] job events stream
-- KEYS[5] dead-letter stream
-- ARGV[5] entry id  ARGV[6] consumer  ARGV[7] min idle ms  ARGV[8] max deliveries
-- ARGV[9] '1' to return the job's trace context too ('' not)
-- ARGV[10] the consumer's gated job types, JSON (see `start_job`), '' for none
-- Returns {'running', attempt, type, payload, timeout_s, children[, trace]} when this consumer
-- must run the job now, else {'skipped', reason} or {'dead', deliveries}.
--@include common
--@include dead_letter

local entry_id, consumer = ARGV[5], ARGV[6]
local claimed = redis.call('XCLAIM', KEYS[1], GROUP, consumer, ARGV[7], entry_id)
if #claimed == 0 then return {'skipped', 'not_idle'} end
if not claimed[1] then
  -- The entry was deleted while pending: nothing to run, clear it from the pending list.
  redis.call('XACK', KEYS[1], GROUP, entry_id)
  return {'skipped', 'deleted'}
end

local j = redis.call('HMGET', KEYS[3], 'status', 'entry_id', 'type', 'payload', 'timeout_s',
  'owner', 'cancel_requested', 'children')
local status = j[1]
if not status or j[2] ~= entry_id or TERMINAL[status] then
  end_delivery(KEYS[1], entry_id)
  return {'skipped', status or 'missing'}
end

local gates = (ARGV[10] or '') ~= '' and cjson.decode(ARGV[10]) or nil
local q = status == QUEUED and redis.call('HMGET', KEYS[3], 'released', 'id', 'attempt')
if q and ((gates and gates[j[3]]) or (q[1] or '') ~= '') then
  -- Read but never started, of a gated type (or let go early by a rate gate, its consumer
  -- dead while it waited for its turn): it waits again as a queued job does, and meets its
  -- gates again rather than starting past them. (Any other entry read but never started
  -- is started here, as below: one that kills each consumer that reads it must come to
  -- count as poison.)
  end_delivery(KEYS[1], entry_id)
  enqueue(KEYS[1], KEYS[3], q[2], j[3], q[3])
  return {'skipped', 'requeued'}
end
local pending = redis.call('XPENDING', KEYS[1], GROUP, entry_id, entry_id, 1)
local deliveries = tonumber(pending[1][4])
if deliveries > tonumber(ARGV[8]) then
  check_transition(status, FAILED)
  end_delivery(KEYS[1], entry_id)
  local text = 'delivered ' .. (deliveries - 1) .. ' times without finishing: its consumers ' ..
    'crashed or were lost (poison message)'
  dead_letter(KEYS[2], KEYS[3], KEYS[4], KEYS[5], text, 'poison', {deliveries = deliveries - 1})
  return {'dead', deliveries - 1}
end

local now = tostring(now_ms())
if status == RUNNING and j[7] == '1' then
  check_transition(RUNNING, CANCELLED)
  redis.call('HSET', KEYS[3], 'status', CANCELLED, 'error', 'cancelled by request',
    'finished_at', now, 'updated_at', now)
  end_delivery(KEYS[1], entry_id)
  emit(KEYS[2], KEYS[3], KEYS[4], JOB_CANCELLED, {reason = 'cancelled by request'})
  job_ended(KEYS[3], KEYS[4], CANCELLED)
  return {'skipped', CANCELLED}
end

check_transition(status, RUNNING)
local attempt = redis.call('HINCRBY', KEYS[3], 'attempt', 1)
-- The handler runs again from its start, so the attempt does too, as `start_job`'s would:
-- the lost attempt's progress is not this one's.
redis.call('HSET', KEYS[3], 'status', RUNNING, 'owner', consumer, 'started_at', now,
  'updated_at', now, 'stage', '', 'progress', '0', 'message', '')
if status == RUNNING then
  emit(KEYS[2], KEYS[3], KEYS[4], JOB_RECLAIMED,
    {from_owner = j[6], owner = consumer, deliveries = deliveries})
else
  emit(KEYS[2], KEYS[3], KEYS[4], JOB_STARTED, {owner = consumer, deliveries = deliveries})
end
local running = {RUNNING, attempt, j[3], j[4], j[5], j[8]}
if ARGV[9] == '1' then running[7] = redis.call('HGET', KEYS[3], 'trace') end
return running
