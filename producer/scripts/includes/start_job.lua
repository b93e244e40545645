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
local function hold(jobs_key, job_key, job_id, entry_id, held_key, first, message, now)
  end_delivery(jobs_key, entry_id)
  redis.call(first and 'LPUSH' or 'RPUSH', held_key, job_id)
  redis.call('HSET', job_key, 'entry_id', '', 'held', held_key, 'released', '', 'turn', '',
    'message', message, 'updated_at', now)
  if first then  -- back first in line: it is no longer let go by the gate
    redis.call('HSET', job_key, released_field(held_key), '')
  end
end

-- A rate gate lets its held jobs go in rounds, each round the jobs whose turns come in the
-- next RATE_ROUND_MS, a little before the first of them (EARLY_MS): the trip back to a
-- consumer takes a few ms, which every start would otherwise add to the interval (at 20/s,
-- 91-98 starts in 5 s instead of 100), and one job a round held a gate of 500/s to 80/s.
-- A job let go comes back to its gate and is booked its own turn: its consumer keeps its
-- entry, waits, and starts it then (`start_later`), still checked against the gate.
local RATE_ROUND_MS, EARLY_MS = 100, 25

local function round_size(interval)
  return math.max(1, math.min(200, math.floor(RATE_ROUND_MS / interval)))
end

-- Whether a job of a gated type may start now (schemas/gates.py declares the gates):
-- `gate` is {interval ms (0: no rate limit), rate key, max running (0: none), concurrency
-- key, the rate as written}. A job may pass a gate that holds none, or that let it go
-- itself: a newcomer does not overtake the jobs held before it. Concurrency is checked
-- first and its slot taken last, so a job held back by the rate holds no slot meanwhile.
-- The slot is the job's until it ends or waits for a retry (`free_slot`): a job re-run after
-- its worker died keeps it. The rate's state is the GCRA's next free start (`tat`) on
-- Redis's clock, with no burst: starts are at least `interval` apart, so no window of the
-- rate's period holds more than its count. Returns true when it may start, false when it
-- was held, or the ms it is to wait at its consumer for its booked turn.
local function pass_gates(jobs_key, job_key, job_id, entry_id, j, gate, now)
  local queue = job_base(job_key, job_id)
  local r = redis.call('HMGET', job_key, 'released', 'released_run')
  local released, released_run = r[1], r[2]
  local slot
  if gate[3] > 0 then
    local key = gate_key(queue, 'run', j[3], gate_value(gate[4], j[9], j[4]))
    if redis.call('SISMEMBER', key, job_id) == 0 then
      local held_key = held_of(key)
      local again = released_run == held_key
      local queue_ahead = not again and redis.call('LLEN', held_key) > 0
      local free = redis.call('SCARD', key) < gate[3]
      if queue_ahead or not free then
        hold(jobs_key, job_key, job_id, entry_id, held_key, again,
          'waiting for a free slot: at most ' ..
          gate[3] .. ' running' .. (gate[4] ~= '' and (' per ' .. gate[4]) or ''), now)
        -- A free slot with jobs held: the one let go for it never came (its worker died
        -- between take and start, say). The first held goes now, not never.
        if free then release_held(held_key, jobs_key, queue .. ':job:') end
        return false
      end
      slot = key
    end
  end
  if gate[1] > 0 then
    local key = gate_key(queue, 'rate', j[3], gate_value(gate[2], j[9], j[4]))
    local held_key = held_of(key)
    local r = redis.call('HMGET', key, 'tat', 'booked')
    local tat, n = tonumber(r[1]) or 0, tonumber(now)
    local again = released == held_key
    if again and tat > n then
      -- Let go for its turn: book it one (once), and wait for it at the consumer.
      local turn = tonumber(redis.call('HGET', job_key, 'turn'))
      if not turn then
        turn = math.max(tat, (tonumber(r[2]) or 0) + gate[1])
        redis.call('HSET', key, 'booked', string.format('%.3f', turn))
        redis.call('HSET', job_key, 'turn', string.format('%.3f', turn))
      end
      return math.max(1, math.ceil(math.max(turn, tat) - n))
    end
    if (not again and redis.call('LLEN', held_key) > 0) or tat > n then
      hold(jobs_key, job_key, job_id, entry_id, held_key, false, 'waiting for the rate limit: ' ..
        gate[5] .. (gate[2] ~= '' and (' per ' .. gate[2]) or ''), now)
      -- The first round is let go just before the next start is free (see promote.lua).
      redis.call('ZADD', queue .. GATES_SUFFIX, 'NX',
        string.format('%d', math.max(tat - EARLY_MS, n)), held_key)
      return false
    end
    local next_tat = math.max(tat, n) + gate[1]
    redis.call('HSET', key, 'tat', string.format('%.3f', next_tat), 'interval', gate[1],
      'round', round_size(gate[1]))
    redis.call('PEXPIRE', key, math.ceil(next_tat - n + RATE_ROUND_MS + gate[1]) + 60000)
  end
  if slot then
    redis.call('SADD', slot, job_id)
    redis.call('HSET', job_key, 'slot', slot, 'on_end', '1')  -- `job_ended` frees it
  end
  if (released and released ~= '') or (released_run and released_run ~= '') then
    redis.call('HSET', job_key, 'released', '', 'released_run', '', 'turn', '', 'message', '')
  end
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
-- A call's jobs start under one consumer: their `job.started` data is encoded once.
local started_data
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
    local passed = pass_gates(jobs_key, job_key, j[7], entry_id, j, gate, now)
    if passed == false then return {'skipped', 'held'} end
    if passed ~= true then return {'skipped', 'early', string.format('%d', passed)} end
  end

  local attempt = (tonumber(j[6]) or 0) + 1
  local job = {j[7], j[8], j[3], j[9], RUNNING, string.format('%d', attempt)}
  started_data = started_data or ('{"owner":' .. cjson.encode(consumer) .. '}')
  local id = append_event(events_key, job_events_key, JOB_STARTED, started_data, job, now)
  redis.call('HSET', job_key, 'status', RUNNING, 'attempt', job[6], 'owner', consumer,
    'started_at', now, 'updated_at', now, 'last_event_id', id)
  if attempt > 1 then  -- a retry: the earlier attempt's progress is not this one's
    redis.call('HSET', job_key, 'stage', '', 'progress', '0', 'message', '')
  end
  local started = {'started', attempt, j[3], j[4], j[5], j[10]}
  if traced then started[7] = redis.call('HGET', job_key, 'trace') end
  return started
end
