-- submit_many: create a bulk of one tenant's jobs in one queue, none with a flow, an
-- Idempotency-Key or a cache lookup (those go through `submit`, one call each). One call for
-- the lot: a submit.lua call per job spent about as much on the call (EVALSHA, its arguments,
-- the script's set-up) as on the job, and 1,000 jobs make 1,000 round trips' worth of replies.
-- KEYS[1] jobs stream  KEYS[2] events stream  KEYS[3] delayed zset
-- KEYS[4] the tenant's job index zset  KEYS[5] the tenant's count of unfinished jobs here
-- ARGV[5] queue  ARGV[6] tenant  ARGV[7] job key prefix
-- ARGV[8] the submit's trace context ('' for none), every job's
-- ARGV[9] '1' to count each job among its tenant's unfinished ones until it ends
-- then FIELDS (8) arguments per job, from ARGV[10]: id, type, payload JSON, max_attempts,
-- timeout_s ('' each for the handler's), delay_ms, priority, callback URL ('' for none)
-- Returns {created_at, the first event's id, the second's, ...}: one per job, in order (the
-- caller builds each new job's snapshot from these and what it sent).
--@include common
--@include create_job

local FIELDS = 8
local queue, tenant, prefix, trace, count = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9] == '1'
local keys = {jobs = KEYS[1], events = KEYS[2], delayed = KEYS[3], tenant_jobs = KEYS[4],
  tenant_active = KEYS[5]}
local now = now_ms()
local ts = tostring(now)
local reply = {ts}
for i = 10, #ARGV, FIELDS do
  local job_id, callback = ARGV[i], ARGV[i + 7]
  local more = nil
  if count or callback ~= '' then
    more = {children = 0, policy = '', parent_id = '', parent_queue = '', callback = callback,
      cache_key = '', cache_ttl = '', count = count}
  end
  keys.job = prefix .. job_id
  keys.job_events = keys.job .. JOB_EVENTS_SUFFIX
  reply[#reply + 1] = create_job(keys, job_id, queue, ARGV[i + 1], tenant, ARGV[i + 2],
    ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6]), '', trace, more,
    now, ts)
end
trim_tenant_jobs(KEYS[4], now)
return reply
