-- Create one job whose submit was already accepted (its idempotency key and cache looked up,
-- a parent's children listed): its place (the jobs stream or the ordered backlog, the delayed
-- set, or `waiting` for its children), its first event, its hash in one HSET and its entry in
-- the tenant's index. Shared by `submit` (one job of any kind) and `submit_many` (a bulk of
-- jobs without a flow), so a job is born the same way whichever script made it.
-- `k`: the queue's keys {jobs, events, delayed, tenant_jobs, tenant_active} and the job's
-- {job, job_events}. Then the job's fields as submit.lua's header names them; `more`, nil for
-- most jobs, holds what a job of a flow, with a callback, a cache entry or counted has:
-- {children (a count), policy, parent_id, parent_queue, callback, cache_key, cache_ttl,
-- count (a boolean)}. Positional, not one table: a table of every field made per job cost a
-- submit 5% more Redis instructions (its allocation, and the collector's work after it).
-- Every field is known here: the event is appended from them and the hash written once (a
-- read-back `emit` and three HSETs cost a submit 20% more). The caller trims the tenant's
-- index once per call (`trim_tenant_jobs`). Returns the event's id.
local function create_job(k, job_id, queue, job_type, tenant, payload, max_attempts, timeout_s,
    delay_ms, priority, idem_key, trace, more, now, ts)
  local children = more and more.children or 0
  local status, event, data, wait_field, wait_value = QUEUED, JOB_QUEUED, '{}', 'entry_id', nil
  if children > 0 then
    status, event, data = WAITING, JOB_WAITING, '{"children":' .. children .. '}'
    wait_field, wait_value = 'children', tostring(children)
  elseif delay_ms > 0 then
    local due = string.format('%d', now + delay_ms)
    status, event, data = SCHEDULED, JOB_SCHEDULED, '{"due_at":' .. due .. '}'
    wait_field, wait_value = 'due_at', due
    redis.call('ZADD', k.delayed, due, job_id)
  else
    wait_value = route(k.jobs, k.job, job_id, job_type, '0', tenant, priority)
  end
  local id = append_event(k.events, k.job_events, event, data,
    {job_id, queue, job_type, tenant, status, '0'}, ts)
  -- A field whose absence every reader takes as its default (`attempt_floor` 0,
  -- `cancel_requested` 0, `idem_key` none) is not written: each pair costs every job its
  -- bytes for the retention, in the hash and in the AOF.
  redis.call('HSET', k.job,
    'id', job_id, 'queue', queue, 'type', job_type, 'tenant', tenant, 'status', status,
    'payload', payload, 'attempt', '0', 'max_attempts', max_attempts, 'timeout_s', timeout_s,
    'progress', '0', 'created_at', ts, 'updated_at', ts, wait_field, wait_value,
    'last_event_id', id)
  -- Each of these only when given: a plain job's hash and AOF entry stay as small as they were.
  if idem_key ~= '' then redis.call('HSET', k.job, 'idem_key', idem_key) end
  if priority ~= DEFAULT_PRIORITY then redis.call('HSET', k.job, 'priority', priority) end
  if trace ~= '' then redis.call('HSET', k.job, 'trace', trace) end
  if more then
    if children > 0 then
      redis.call('HSET', k.job, 'children_pending', wait_value, 'on_child_failure', more.policy)
    end
    if more.parent_id ~= '' then
      redis.call('HSET', k.job, 'parent_id', more.parent_id, 'parent_queue', more.parent_queue)
    end
    if more.callback ~= '' then redis.call('HSET', k.job, 'callback_url', more.callback) end
    if more.cache_key ~= '' then
      redis.call('HSET', k.job, 'cache_key', more.cache_key, 'cache_ttl', more.cache_ttl)
    end
    if more.count then
      redis.call('INCR', k.tenant_active)
      redis.call('HSET', k.job, 'counted', k.tenant_active)  -- `job_ended` counts it out
    end
    redis.call('HSET', k.job, 'on_end', '1')  -- see `job_ended`
  end
  redis.call('ZADD', k.tenant_jobs, ts, job_id)
  return id
end

-- The tenant's index outlives no job: ids older than the retention have expired hashes.
local function trim_tenant_jobs(tenant_jobs_key, now)
  redis.call('ZREMRANGEBYSCORE', tenant_jobs_key, '-inf',
    string.format('%d', now - RETENTION_S * 1000))
end
