-- limit: reserve the next start under a shared rate limit (`ctx.limit`), on Redis's clock so
-- that every worker, whatever its own clock, is spaced by the same one. The limiter is the
-- GCRA's theoretical arrival time with no burst: starts are at least `interval` apart, so no
-- window of the rate's period holds more than its count. A caller is given its slot (and
-- waits for it); the next caller's slot is one interval later.
-- KEYS[1] the limit's key
-- ARGV[5] interval in ms (may be fractional)
-- Returns {slot ms, now ms} as strings.
--@include common

local now = now_ms()
local interval = tonumber(ARGV[5])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(tat, now)
local next_tat = slot + interval
redis.call('SET', KEYS[1], string.format('%.3f', next_tat), 'PX',
  math.max(1, math.ceil(next_tat - now + interval)))
return {string.format('%.3f', slot), tostring(now)}
