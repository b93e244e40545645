-- start: a consumer read entries (XREADGROUP, blocking while the queue was empty); start
-- each one's job, as `start_job` says. Takes a batch of entries, so a consumer's fetch costs
-- one script call rather than one per job; each job's change is whole and checked on its own,
-- as if it had its own call.
-- KEYS[1] jobs stream  KEYS[2] events stream
-- KEYS[1+2i] job hash  KEYS[2+2i] job events stream, for the i-th entry (i = 1..n)
-- ARGV[5] consumer name  ARGV[5+i] the i-th entry id
-- Returns, per entry in order, {'started', attempt, type, payload, timeout_s, children} or
-- {'skipped', reason}.
--@include common
--@include start_job

local now = tostring(now_ms())
local results = {}
for i = 1, #ARGV - 5 do
  results[i] = start_job(KEYS[1], KEYS[2], KEYS[1 + 2 * i], KEYS[2 + 2 * i], ARGV[5 + i], ARGV[5],
    now)
end
return results
