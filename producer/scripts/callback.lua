-- callback: how a delivery of a job's `callback_url` went: `delivered`, `pending` again with
-- the time of the next try (the job id goes into the due set), or `failed` for good. Only the
-- callback's fields of the hash change: the job ended before its callback was queued, and
-- a job whose hash expired meanwhile is not made again by this write.
-- KEYS[1] job hash  KEYS[2] callbacks due zset
-- ARGV[5] job id  ARGV[6] status  ARGV[7] attempts  ARGV[8] last error  ARGV[9] due ms or ''
-- Returns 1, or 0 when the job is gone.
--@include common

if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'callback_status', ARGV[6], 'callback_attempts', ARGV[7],
  'callback_error', ARGV[8])
if ARGV[9] ~= '' then redis.call('ZADD', KEYS[2], ARGV[9], ARGV[5]) end
return 1
