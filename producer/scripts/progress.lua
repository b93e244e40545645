-- progress: a running handler reports its stage and percent (fields, not a status).
-- KEYS[1] events stream  KEYS[2] job hash  KEYS[3] job events stream
-- ARGV[5] attempt (fencing)  ARGV[6] percent or ''  ARGV[7] stage or ''  ARGV[8] message or ''
-- Returns 1, or 0 when the attempt no longer holds the job (the write is refused).
--@include common

if not holds_lease(KEYS[2], ARGV[5]) then return 0 end
local data = {}
local fields = {'updated_at', tostring(now_ms())}
if ARGV[6] ~= '' then
  data.progress = tonumber(ARGV[6])
  table.insert(fields, 'progress'); table.insert(fields, ARGV[6])
end
if ARGV[7] ~= '' then
  data.stage = ARGV[7]
  table.insert(fields, 'stage'); table.insert(fields, ARGV[7])
end
if ARGV[8] ~= '' then
  data.message = ARGV[8]
  table.insert(fields, 'message'); table.insert(fields, ARGV[8])
end
redis.call('HSET', KEYS[2], unpack(fields))
emit(KEYS[1], KEYS[2], KEYS[3], JOB_PROGRESS, data)
return 1
