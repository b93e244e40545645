-- fail: the handler raised. With attempts left and a retryable error, `running -> scheduled`
-- after a backoff (job.retrying); otherwise `running -> failed` and dead-lettered (job.failed).
-- Either way the delivery ends here.
-- KEYS[1] jobs stream  KEYS[2] events stream  KEYS[3] job hash  KEYS[4] job events stream
-- KEYS[5] delayed zset  KEYS[6] dead-letter stream
-- ARGV[5] entry id  ARGV[6] attempt (fencing)  ARGV[7] error text  ARGV[8] '1' if retryable
-- ARGV[9] backoff in ms (the caller draws the jitter)
-- ARGV[10] max attempts when the job did not set its own (the handler's declared max_tries)
-- Returns {'retrying', due_ms}, {'failed', 0}, or {'fenced', 0} (nothing written).
--@include common
--@include dead_letter

if not holds_lease(KEYS[3], ARGV[6]) then return {'fenced', 0} end
local j = redis.call('HMGET', KEYS[3], 'attempt', 'attempt_floor', 'max_attempts')
local used = tonumber(j[1]) - tonumber(j[2] or 0)
local max_attempts = tonumber(j[3]) or tonumber(ARGV[10])
local retry = ARGV[8] == '1' and used < max_attempts
local now = now_ms()

if retry then
  check_transition(RUNNING, SCHEDULED)
  local due = now + tonumber(ARGV[9])
  redis.call('HSET', KEYS[3], 'status', SCHEDULED, 'error', ARGV[7], 'due_at', tostring(due),
    'updated_at', tostring(now))
  local f = redis.call('HMGET', KEYS[3], 'id', 'slot')
  redis.call('ZADD', KEYS[5], due, f[1])
  end_delivery(KEYS[1], ARGV[5])
  free_slot(KEYS[3], f[1], f[2])  -- it runs nowhere while it waits
  emit(KEYS[2], KEYS[3], KEYS[4], JOB_RETRYING,
    {error = ARGV[7], due_at = due, delay_ms = tonumber(ARGV[9]), attempts_used = used})
  return {'retrying', due}
end

check_transition(RUNNING, FAILED)
end_delivery(KEYS[1], ARGV[5])
dead_letter(KEYS[2], KEYS[3], KEYS[4], KEYS[6], ARGV[7], 'handler_error', {})
return {FAILED, 0}
