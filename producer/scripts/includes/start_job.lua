-- The value of a gate's key for a job: '' (one gate for the type), its tenant, or a field of
-- its payload (`payload.<field>`; '' when the payload has no such field).
local function gate_value(spec, tenant, payload)
  if spec == '' then return '' end
  if spec == 'tenant' then return tenant or '' end
  local ok, fields = pcall(cjson.decode, payload or '{}')
  local value = ok and type(fields) == 'table' and fields[string.sub(spec, 9)] or nil
  if value == nil or value == cjson.null then return '' end
  return type(value) == 'table' and cjson.encode(value) or tostring(value)
end

-- Hold a queued job at a gate: its entry ends, it waits in the gate's list (in order; first
-- again if the gate had let it go, `first`), still `queued`, its attempt untouched; its
-- snapshot's `message` says what for.
local function hold(jobs_key, job_key, entry_id, held_key, first, message, now)
  end_delivery(jobs_key, entry_id)
  redis.call(first and 'LPUSH' or 'RPUSH', held_key, string.match(job_key, ':job:([^:]*)$'))
  redis.call('HSET', job_key, 'entry_id', '', 'held', held_key, 'released', '',
    'message', message, 'updated_at', now)
end

-- How early a rate gate lets its next held job go: the trip back to a consumer takes a few
-- ms, which every start would add to the interval (at 20/s, 91-98 starts in 5 s instead of
-- 100); a job let go early waits at its consumer for the rest, and starts within a ms.
local function early_ms(interval)
  return math.min(interval / 2, 25)
end

-- Whether a job of a gated type may start now (consumers/gates.py declares the gates):
-- `gate` is {interval ms (0: no rate limit), rate key, max running (0: none), concurrency
-- key, the rate as written}. A job may pass a gate that holds none, or that let it go
-- itself: a newcomer does not overtake the jobs held before it. Concurrency is checked
-- first and its slot taken last, so a job held back by the rate holds no slot meanwhile.
-- The slot is the job's until it ends or waits for a retry (`free_slot`): a job re-run after
-- its worker died keeps it. The rate's state is the GCRA's next free start on Redis's clock,
-- with no burst: starts are at least `interval` apart. Returns true when it may start,
-- false when it was held, or the ms it is to wait at its consumer (let go early).
local function pass_gates(jobs_key, job_key, entry_id, j, gate, now)
  local job_id = string.match(job_key, ':job:([^:]*)$')
  local base = queue_key(job_key, GATE_SUFFIX)
  local released = redis.call('HGET', job_key, 'released')
  local slot
  if gate[3] > 0 then
    local key = base .. 'run:' .. j[3] .. ':' .. gate_value(gate[4], j[9], j[4])
    if redis.call('SISMEMBER', key, job_id) == 0 then
      local held_key = key .. ':held'
      local queue_ahead = released ~= held_key and redis.call('LLEN', held_key) > 0
      if queue_ahead or redis.call('SCARD', key) >= gate[3] then
        hold(jobs_key, job_key, entry_id, held_key, released == held_key,
          'waiting for a free slot: at most ' ..
          gate[3] .. ' running' .. (gate[4] ~= '' and (' per ' .. gate[4]) or ''), now)
        return false
      end
      slot = key
    end
  end
  if gate[1] > 0 then
    local key = base .. 'rate:' .. j[3] .. ':' .. gate_value(gate[2], j[9], j[4])
    local held_key = key .. ':held'
    local tat = tonumber(redis.call('HGET', key, 'tat')) or 0
    local queue_ahead = released ~= held_key and redis.call('LLEN', held_key) > 0
    local again = released == held_key
    if again and tat > tonumber(now) and tat - tonumber(now) <= early_ms(gate[1]) then
      -- Let go early, as the rate gate does (promote.lua), to start on time: its consumer
      -- keeps the entry and starts it again when the next start is free.
      return tat - tonumber(now)
    end
    if queue_ahead or tat > tonumber(now) then
      hold(jobs_key, job_key, entry_id, held_key, again, 'waiting for the rate limit: ' ..
        gate[5] .. (gate[2] ~= '' and (' per ' .. gate[2]) or ''), now)
      -- The next is let go just before the next start is free (see promote.lua).
      local due = string.format('%d', math.max(tat - early_ms(gate[1]), tonumber(now)))
      if again then
        redis.call('ZADD', queue_key(job_key, GATES_SUFFIX), due, held_key)
      else
        redis.call('ZADD', queue_key(job_key, GATES_SUFFIX), 'NX', due, held_key)
      end
      return false
    end
    local next_tat = math.max(tat, tonumber(now)) + gate[1]
    redis.call('HSET', key, 'tat', string.format('%.3f', next_tat), 'interval', gate[1])
    redis.call('PEXPIRE', key, math.ceil(next_tat - tonumber(now) + gate[1]) + 60000)
    if redis.call('LLEN', held_key) > 0 then  -- the next held one goes just before its turn
      redis.call('ZADD', queue_key(job_key, GATES_SUFFIX),
        string.format('%d', next_tat - early_ms(gate[1])), held_key)
    end
  end
  if slot then
    redis.call('SADD', slot, job_id)
    redis.call('HSET', job_key, 'slot', slot, 'on_end', '1')  -- `job_ended` frees it
  end
  if released and released ~= '' then redis.call('HSET', job_key, 'released', '', 'message', '') end
  return true
end

-- Start one read entry's job, `queued -> running` under a new attempt owned by `consumer`:
-- the body of both `start` (entries the consumer read itself) and `take` (entries read in
-- the script). An entry whose job already ended (or was cancelled, or re-queued under a newer
-- entry) is acknowledged and skipped: a re-delivered finished job is never run twice. A job
-- whose type the consumer gates (`gates`: type -> gate, see `pass_gates`) and that may not
-- start yet is held, skipped as 'held'; or, let go a few ms before its turn, skipped as
-- 'early' with the ms to wait, its entry still delivered to this consumer.
-- Returns {'started', attempt, type, payload, timeout_s, children} or {'skipped', reason};
-- `children` is a parent's count of children (false for a job without). A consumer that
-- traces asks for the job's trace context too (`traced`): then a seventh element, the
-- job's `trace` (false for none). Only then, so that a consumer that does not trace reads no
-- more than before (one more HMGET field costs each job 1.1% more of Redis's instructions).
local function start_job(jobs_key, events_key, job_key, job_events_key, entry_id, consumer, now,
    traced, gates)
  local j = redis.call('HMGET', job_key, 'status', 'entry_id', 'type', 'payload', 'timeout_s',
    'attempt', 'id', 'queue', 'tenant', 'children')
  local status = j[1]
  if not status then
    end_delivery(jobs_key, entry_id)
    return {'skipped', 'missing'}
  end
  if j[2] ~= entry_id then
    -- The job was re-queued under a newer entry (manual retry, backoff): this one is spent.
    end_delivery(jobs_key, entry_id)
    return {'skipped', 'stale'}
  end
  if status ~= QUEUED then
    if TERMINAL[status] then end_delivery(jobs_key, entry_id) end
    return {'skipped', status}
  end
  check_transition(status, RUNNING)
  local gate = gates and gates[j[3]]
  if gate then
    local passed = pass_gates(jobs_key, job_key, entry_id, j, gate, now)
    if passed == false then return {'skipped', 'held'} end
    if passed ~= true then return {'skipped', 'early', string.format('%d', passed)} end
  end

  local attempt = (tonumber(j[6]) or 0) + 1
  local job = {j[7], j[8], j[3], j[9], RUNNING, string.format('%d', attempt)}
  local data = '{"owner":' .. cjson.encode(consumer) .. '}'
  local id = append_event(events_key, job_events_key, JOB_STARTED, data, job, now)
  redis.call('HSET', job_key, 'status', RUNNING, 'attempt', job[6], 'owner', consumer,
    'started_at', now, 'updated_at', now, 'last_event_id', id)
  if attempt > 1 then  -- a retry: the earlier attempt's progress is not this one's
    redis.call('HSET', job_key, 'stage', '', 'progress', '0', 'message', '')
  end
  local started = {'started', attempt, j[3], j[4], j[5], j[10]}
  if traced then started[7] = redis.call('HGET', job_key, 'trace') end
  return started
end
