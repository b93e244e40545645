-- step: one step of a multi-step job (`ctx.step`) starts or ends, recorded with its job.step
-- event in one step and fenced by the attempt, so an attempt that lost the job (frozen past
-- its lease, then resumed) can neither record a step nor overwrite one. A step that already
-- succeeded, in any earlier attempt, is not started again: `start` answers `restored` with
-- its record, and the handler gets the recorded result back instead of running it.
-- The record (the steps hash's value under the step's name) is a JSON object: name, state,
-- attempt, seq (first-start order), started_at, finished_at, duration_ms, error, kind
-- ('json' or 'artifact') and, last, `result` as the worker encoded it (not re-encoded here:
-- cjson would round big integers and turn an empty list into `{}`).
-- KEYS[1] events stream  KEYS[2] job hash  KEYS[3] job events stream  KEYS[4] steps hash
-- ARGV[5] attempt (fencing)  ARGV[6] step name  ARGV[7] STEP_STARTED, STEP_SUCCEEDED or STEP_FAILED
-- ARGV[8] start: max steps per job; succeeded: the result JSON; failed: the error text
-- ARGV[9] succeeded, failed: duration in ms  ARGV[10] succeeded: 'json' or 'artifact'
-- Returns {STEP_STARTED}, {STEP_RESTORED, record}, {'too_many'}, {'recorded'} or {'fenced'}.
--@include common

-- The job's fields are read once, for the fencing check and the event; the hash is written
-- once (a read-back `emit` cost a step 10% more Redis instructions: bench.steps).
local j = redis.call('HMGET', KEYS[2], 'status', 'attempt', 'id', 'queue', 'type', 'tenant')
if j[1] ~= RUNNING or j[2] ~= ARGV[5] then return {'fenced'} end
local job = {j[3], j[4], j[5], j[6], j[1], j[2]}
local name, action = ARGV[6], ARGV[7]
local now = now_ms()
local ts = tostring(now)

local function event(data)
  local id = append_event(KEYS[1], KEYS[3], JOB_STEP, data, job, ts)
  redis.call('XTRIM', KEYS[3], 'MAXLEN', '~', JOB_EVENTS_MAXLEN)
  return id
end
local raw = redis.call('HGET', KEYS[4], name)
local step = raw and cjson.decode(raw)

if action == STEP_STARTED then
  if step and step.state == STEP_SUCCEEDED then
    local id = event({step = name, state = STEP_RESTORED})
    redis.call('HSET', KEYS[2], 'updated_at', ts, 'last_event_id', id)
    return {STEP_RESTORED, raw}
  end
  local seq = step and step.seq
  if not seq then
    seq = redis.call('HLEN', KEYS[4]) + 1
    if seq > tonumber(ARGV[8]) then return {'too_many'} end
  end
  redis.call('HSET', KEYS[4], name, cjson.encode({name = name, state = STEP_STARTED,
    attempt = tonumber(ARGV[5]), seq = seq, started_at = now}))
  local id = event({step = name, state = STEP_STARTED})
  redis.call('HSET', KEYS[2], 'stage', name, 'steps', '1', 'on_end', '1', 'updated_at', ts,
    'last_event_id', id)
  return {STEP_STARTED}
end

-- An end: of the step this attempt started (a record another attempt left is replaced).
local duration = tonumber(ARGV[9])
local record = {name = name, state = action, attempt = tonumber(ARGV[5]),
  seq = step and step.seq or (redis.call('HLEN', KEYS[4]) + 1),
  started_at = step and step.started_at or now, finished_at = now, duration_ms = duration}
local data = {step = name, state = action, duration_ms = duration}
local encoded
if action == STEP_SUCCEEDED then
  record.kind = ARGV[10]
  encoded = cjson.encode(record)
  encoded = string.sub(encoded, 1, -2) .. ',"result":' .. ARGV[8] .. '}'
else
  record.error, data.error = ARGV[8], ARGV[8]
  encoded = cjson.encode(record)
end
redis.call('HSET', KEYS[4], name, encoded)
local id = event(data)
redis.call('HSET', KEYS[2], 'steps', '1', 'on_end', '1', 'updated_at', ts, 'last_event_id', id)
return {'recorded'}
