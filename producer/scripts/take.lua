-- take: a busy consumer's fetch and start in one call. Reads up to `count` entries never
-- delivered to any consumer (XREADGROUP, as the consumer would) and starts each one's job as
-- `start_job` says. One round trip instead of a read and then a start: a consumer sends it
-- with the writes of the jobs it just finished, so Redis has the next batch's work while the
-- consumer runs the last one's handlers. A script cannot block: an idle consumer blocks on
-- XREADGROUP itself, then calls `start`.
-- While the queue waits in its ordered backlog (see `route`), the jobs come from there: in
-- priority and fair order, each given its entry here and read at once, so that the entry
-- never waits in the stream behind others.
-- Job keys are built from ARGV[7]; they share the queue's hash tag, so the slot.
-- A paused queue gives nothing (its consumer then waits for the pause to end).
-- KEYS[1] jobs stream  KEYS[2] events stream  KEYS[3] the queue's pause flag
-- ARGV[5] consumer name  ARGV[6] count  ARGV[7] job key prefix
-- ARGV[8] '1' to return each job's trace context too ('' not)
-- ARGV[9] the consumer's gated job types, JSON (see `start_job`), '' for none
-- Returns, per entry read, {entry id, job id, 'started', attempt, type, payload, timeout_s,
-- children[, trace]}
-- or {entry id, job id, 'skipped', reason}; and a last row {'', '', 'moving'} when there is
-- more to take than it took (it moved part of the stream into the ordered backlog, or found
-- the backlog in use): the consumer asks again.
--@include common
--@include start_job

-- Entries the stream may hand the backlog in one call: moving 1,000 took Redis about 10 ms,
-- long enough to hold every other client up for; a deeper stream takes several calls.
local MOVE_AT_ONCE = 1000

local consumer, prefix, count = ARGV[5], ARGV[7], tonumber(ARGV[6])
if redis.call('EXISTS', KEYS[3]) == 1 then return {} end
local base = string.match(prefix, '^(.*):job:$')  -- the queue's `conveyor:{q}`
local lead_key = base .. LEAD_SUFFIX
local lead = redis.call('GET', lead_key)
local now = tostring(now_ms())
local traced = ARGV[8] == '1'
local gates = ARGV[9] ~= '' and cjson.decode(ARGV[9]) or nil

local function read(n)
  local reply = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', n,
    'STREAMS', KEYS[1], '>')
  return reply and reply[1][2] or {}
end

local function job_of(fields)
  for f = 1, #fields, 2 do
    if fields[f] == 'job_id' then return fields[f + 1] end
  end
  return nil
end

local function start_entries(entries)
  local results = {}
  for i, entry in ipairs(entries) do
    local entry_id, job_id = entry[1], job_of(entry[2])
    local result
    if job_id and job_id ~= '' then
      local job_key = prefix .. job_id
      result = start_job(KEYS[1], KEYS[2], job_key, job_key .. JOB_EVENTS_SUFFIX, entry_id,
        consumer, now, traced, gates)
    else  -- a wake-up entry (`backlog_add`), or not one a script of ours wrote
      end_delivery(KEYS[1], entry_id)
      job_id, result = '', {'skipped', 'missing'}
    end
    table.insert(result, 1, job_id)
    table.insert(result, 1, entry_id)
    results[i] = result
  end
  return results
end

if lead ~= ORDERED_LEAD then
  local entries = read(count)
  if #entries < count then
    if redis.call('EXISTS', base .. BACKLOG_SUFFIX) == 1 then
      -- The backlog has jobs but `lead` was lost (a Redis restarted without its last
      -- writes): take from the backlog again, from the next call on.
      redis.call('SET', lead_key, ORDERED_LEAD)
      local results = start_entries(entries)
      results[#results + 1] = {'', '', 'moving'}
      return results
    end
    -- Nothing waits: whoever submits next leads (see `route`).
    if lead then redis.call('DEL', lead_key) end
  end
  return start_entries(entries)
end

-- Ordered: first, what the stream still holds moves to the backlog, each job behind its own
-- tenant's earlier ones, so the stream is empty when the backlog's jobs get their entries.
local moving = read(MOVE_AT_ONCE)
for _, entry in ipairs(moving) do
  backlog_move(base, KEYS[1], prefix .. (job_of(entry[2]) or ''), entry[1])
end
if #moving == MOVE_AT_ONCE then return {{'', '', 'moving'}} end

local backlog = base .. BACKLOG_SUFFIX
local picked = redis.call('ZRANGE', backlog, 0, count - 1, 'WITHSCORES')
if #picked == 0 then
  -- Both are empty: the next job leads again, in the stream, and the fair clock restarts.
  redis.call('DEL', lead_key, base .. FAIR_SUFFIX)
  return {}
end
local ids = {}
for i = 1, #picked, 2 do
  local job_id = picked[i]
  ids[#ids + 1] = job_id
  local job_key = prefix .. job_id
  local j = redis.call('HMGET', job_key, 'type', 'attempt')
  if j[1] then  -- else its hash expired meanwhile: nothing to run, nor to write back
    redis.call('HSET', job_key, 'entry_id', add_entry(KEYS[1], job_id, j[1], j[2] or '0'))
  end
end
redis.call('ZREM', backlog, unpack(ids))
-- Each level's clock moves to the latest job taken there: a tenant arriving now queues right
-- behind it.
local clocks = {}
for i = 2, #picked, 2 do
  local score = tonumber(picked[i])
  local field = ORDERED_LEAD .. (9 - math.floor(score / 1099511627776))
  clocks[field] = math.max(clocks[field] or 0, score % 1099511627776)
end
for field, vtime in pairs(clocks) do
  local clock = tonumber(redis.call('HGET', base .. FAIR_SUFFIX, field)) or 0
  if vtime > clock then
    redis.call('HSET', base .. FAIR_SUFFIX, field, string.format('%.0f', vtime))
  end
end
return start_entries(read(#ids))
