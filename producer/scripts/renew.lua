-- renew: the owner of a running job extends its lease on the entry (resets its idle time),
-- so a long job is not reclaimed while its worker is alive. Fenced: an owner whose job was
-- reclaimed by another consumer learns it here and must stop.
-- KEYS[1] jobs stream  KEYS[2] job hash
-- ARGV[5] entry id  ARGV[6] consumer  ARGV[7] attempt
-- Returns {held, cancel_requested}: held 0 means the lease is lost.
--@include common

local j = redis.call('HMGET', KEYS[2], 'status', 'attempt', 'owner', 'entry_id', 'cancel_requested')
if j[1] ~= RUNNING or j[2] ~= ARGV[7] or j[3] ~= ARGV[6] or j[4] ~= ARGV[5] then
  return {0, 0}
end
local claimed = redis.call('XCLAIM', KEYS[1], GROUP, ARGV[6], 0, ARGV[5], 'JUSTID')
if #claimed == 0 then return {0, 0} end
return {1, tonumber(j[5]) or 0}
