-- submit: create a job, `queued` (appended to the jobs stream), `scheduled` (delayed set) or,
-- a parent of a flow, `waiting` for its children (listed in its children hash, `pending`
-- each, until their ends reach it: see child_ended.lua).
-- KEYS[1] jobs stream      KEYS[2] events stream   KEYS[3] job hash   KEYS[4] job events stream
-- KEYS[5] delayed zset     KEYS[6] idempotency key ('' semantics: ARGV[14] == '0')
-- KEYS[7] tenant's job index zset
-- A job that is part of a flow, or asks for a callback, the cache or to be counted, comes
-- with four keys and eight arguments more (a plain one does not: every argument of a script
-- is parsed and copied into the AOF, on every submit):
-- KEYS[8] children hash  KEYS[9] waiting parents zset  KEYS[10] cache key
-- KEYS[11] the tenant's count of unfinished jobs in this queue
-- ARGV[5] job_id  ARGV[6] queue  ARGV[7] type  ARGV[8] tenant  ARGV[9] payload JSON
-- ARGV[10] max_attempts  ARGV[11] timeout_s  ARGV[12] delay_ms  ARGV[13] job key prefix
-- ARGV[14] '1' if an Idempotency-Key was given
-- then, for a plain job with a trace context or a priority: ARGV[15] the context (see
-- ARGV[23]) and ARGV[16] the priority (see ARGV[24]), each only when given; or
-- ARGV[15] parent id ('' for none)  ARGV[16] parent queue  ARGV[17] on_child_failure
-- ARGV[18] when to check first that its children exist (ms)
-- ARGV[19] callback URL ('' for none)  ARGV[20] '1' to look in the cache first
-- ARGV[21] cache TTL in s, for its entry once the job succeeds
-- ARGV[22] '1' to count the job among its tenant's unfinished ones until it ends
-- ARGV[23] the submit's trace context, `traceparent[ tracestate]` ('' for none)
-- ARGV[24] its priority, 0-9 (DEFAULT_PRIORITY when not given)
-- ARGV[25..] its children, as pairs: child id, child queue
-- Returns {1, job_id, created_at, last_event_id} when created (the caller builds the new
-- job's snapshot from these and what it sent, without reading the hash back),
-- {0, existing_job_id} for a repeated Idempotency-Key,
-- {2, cached_job_id} when the cache names a job that succeeded (nothing created), {-1, ''}
-- when the key names another tenant's job (nothing written).
--@include common
--@include create_job

local job_id, queue, job_type, tenant = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local delay_ms = tonumber(ARGV[12])
local parent_id, parent_queue, policy, check_at, callback, cached, cache_ttl, count =
  '', '', '', '', '', '0', '', '0'
local children, trace, priority = 0, '', DEFAULT_PRIORITY
if #KEYS > 7 then
  parent_id, parent_queue, policy, check_at = ARGV[15], ARGV[16], ARGV[17], ARGV[18]
  callback, cached, cache_ttl, count, trace = ARGV[19], ARGV[20], ARGV[21], ARGV[22], ARGV[23]
  priority = tonumber(ARGV[24])
  children = (#ARGV - 24) / 2
elseif #ARGV > 14 then
  trace = ARGV[15]
  priority = tonumber(ARGV[16]) or DEFAULT_PRIORITY
end

if ARGV[14] == '1' then
  local existing = redis.call('GET', KEYS[6])
  -- The key's name holds the tenant, but the job it finds must be the caller's too: a key
  -- that could be read two ways once handed one tenant another's job.
  local owner = existing and redis.call('HGET', ARGV[13] .. existing, 'tenant')
  if owner then
    if owner == tenant then
      return {0, existing}
    end
    return {-1, ''}
  end
end

-- The cache names the job that did this tenant's same work (its key holds the tenant), set
-- when that job succeeded; a failed or cancelled job never gets there.
if cached == '1' then
  local earlier = redis.call('GET', KEYS[10])
  if earlier and redis.call('HGET', ARGV[13] .. earlier, 'status') == SUCCEEDED then
    if ARGV[14] == '1' then redis.call('SET', KEYS[6], earlier, 'EX', IDEM_TTL_S) end
    return {2, earlier}
  end
end
if ARGV[14] == '1' then redis.call('SET', KEYS[6], job_id) end

local now = now_ms()
local ts = tostring(now)
if children > 0 then
  for i = 25, #ARGV, 2 do
    redis.call('HSET', KEYS[8], ARGV[i], cjson.encode({queue = ARGV[i + 1], status = 'pending'}))
  end
  redis.call('ZADD', KEYS[9], check_at, job_id)
end
local more = nil
if #KEYS > 7 then
  more = {children = children, policy = policy, parent_id = parent_id,
    parent_queue = parent_queue, callback = callback,
    cache_key = (cached == '1') and KEYS[10] or '', cache_ttl = cache_ttl, count = count == '1'}
end
local keys = {jobs = KEYS[1], events = KEYS[2], job = KEYS[3], job_events = KEYS[4],
  delayed = KEYS[5], tenant_jobs = KEYS[7], tenant_active = KEYS[11]}
local id = create_job(keys, job_id, queue, job_type, tenant, ARGV[9], ARGV[10], ARGV[11],
  delay_ms, priority, (ARGV[14] == '1') and KEYS[6] or '', trace, more, now, ts)
trim_tenant_jobs(KEYS[7], now)
return {1, job_id, ts, id}
