-- schedule_tick: a schedule's job for `tick` was submitted (under the idempotency key of the
-- schedule and tick, so workers racing on the same tick made one job): record it as the
-- last tick, unless a later one already is, with the next tick due. Called with no new tick
-- (''), it only records when the next one is due.
-- KEYS[1] schedule ticks hash
-- ARGV[5] the schedule's key (`tenant/name`)  ARGV[6] tick ms or ''  ARGV[7] next tick ms
-- Returns 1 when the tick was recorded, else 0.
--@include common

local raw = redis.call('HGET', KEYS[1], ARGV[5])
local state = raw and cjson.decode(raw) or {}
local recorded = 0
if ARGV[6] ~= '' and tonumber(ARGV[6]) > (state.last or 0) then
  state.last = tonumber(ARGV[6])
  recorded = 1
end
if recorded == 1 or state.next ~= tonumber(ARGV[7]) then
  state.next = tonumber(ARGV[7])
  redis.call('HSET', KEYS[1], ARGV[5], cjson.encode(state))
end
return recorded
