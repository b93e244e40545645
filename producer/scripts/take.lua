-- take: a busy consumer's fetch and start in one call. Reads up to `count` entries never
-- delivered to any consumer (XREADGROUP, as the consumer would) and starts each one's job as
-- `start_job` says. One round trip instead of a read and then a start: a consumer sends it
-- with the writes of the jobs it just finished, so Redis has the next batch's work while the
-- consumer runs the last one's handlers. A script cannot block: an idle consumer blocks on
-- XREADGROUP itself, then calls `start`.
-- Job keys are built from ARGV[7]; they share the queue's hash tag, so the slot.
-- A paused queue gives nothing (its consumer then waits for the pause to end).
-- KEYS[1] jobs stream  KEYS[2] events stream  KEYS[3] the queue's pause flag
-- ARGV[5] consumer name  ARGV[6] count  ARGV[7] job key prefix
-- ARGV[8] '1' to return each job's trace context too ('' not)
-- Returns, per entry read, {entry id, job id, 'started', attempt, type, payload, timeout_s,
-- children[, trace]}
-- or {entry id, job id, 'skipped', reason}.
--@include common
--@include start_job

local consumer, prefix = ARGV[5], ARGV[7]
if redis.call('EXISTS', KEYS[3]) == 1 then return {} end
local reply = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', ARGV[6],
  'STREAMS', KEYS[1], '>')
local results = {}
if not reply then return results end
local now = tostring(now_ms())
local traced = ARGV[8] == '1'
for i, entry in ipairs(reply[1][2]) do
  local entry_id, fields, job_id = entry[1], entry[2], nil
  for f = 1, #fields, 2 do
    if fields[f] == 'job_id' then job_id = fields[f + 1] end
  end
  local result
  if job_id then
    local job_key = prefix .. job_id
    result = start_job(KEYS[1], KEYS[2], job_key, job_key .. JOB_EVENTS_SUFFIX, entry_id, consumer,
      now, traced)
  else  -- not an entry a script of ours wrote: nothing to run
    end_delivery(KEYS[1], entry_id)
    job_id, result = '', {'skipped', 'missing'}
  end
  table.insert(result, 1, job_id)
  table.insert(result, 1, entry_id)
  results[i] = result
end
return results
