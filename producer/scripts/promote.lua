-- promote: move due jobs from the delayed set to where queued jobs wait (`enqueue`), and let
-- go the next job held at each rate gate whose next start is free. ZREM (LPOP) decides who
-- moves an id, inside one script, so many workers promoting at once never enqueue a job twice.
-- Job keys are built from ARGV[6]; they share the queue's hash tag, so the same slot.
-- KEYS[1] delayed zset  KEYS[2] jobs stream  KEYS[3] events stream  KEYS[4] rate gates zset
-- ARGV[5] max ids to move  ARGV[6] job key prefix
-- Returns {moved, next_due_ms or -1}: the next delayed job's or gate's time.
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
-- A rate gate lets its held jobs go in order, a round at a time: those whose turns come in
-- the next RATE_ROUND_MS (`round`, written by `pass_gates`), a little before the first turn;
-- each is booked its turn when it comes back to the gate. A thousand jobs held at one limit
-- do not all wake to find it spent.
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
for _, held_key in ipairs(due) do
  local gate = string.gsub(held_key, ':gate:(%a+)%-held:', ':gate:%1:', 1)
  local g = redis.call('HMGET', gate, 'interval', 'round')
  local interval, round = tonumber(g[1]) or 1000, tonumber(g[2]) or 1
  local released = 0
  while released < round and release_held(held_key, KEYS[2], ARGV[6]) do
    released = released + 1
  end
  if released > 0 and redis.call('LLEN', held_key) > 0 then
    -- The next round, unless a start says sooner (`pass_gates`).
    redis.call('ZADD', KEYS[4], string.format('%d', now + interval * released), held_key)
  else
    redis.call('ZREM', KEYS[4], held_key)
  end
end
local nxt = math.huge
for _, key in ipairs({KEYS[1], KEYS[4]}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #first > 0 then nxt = math.min(nxt, tonumber(first[2])) end
end
if nxt == math.huge then return {moved, -1} end
return {moved, nxt}
