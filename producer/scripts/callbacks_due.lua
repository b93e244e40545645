-- callbacks_due: callbacks whose next try is due go back into the callbacks stream, where
-- one worker of the queue takes each (its group `callbacks`). ZREM decides who moves an id,
-- inside one script, so many workers doing this at once never queue a delivery twice.
-- KEYS[1] callbacks due zset  KEYS[2] callbacks stream
-- ARGV[5] max ids to move
-- Returns {moved, next due ms or -1}.
--@include common

local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
for _, job_id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], job_id)
  redis.call('XADD', KEYS[2], '*', 'job_id', job_id)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return {#ids, -1} end
return {#ids, tonumber(nxt[2])}
