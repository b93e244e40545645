-- start: a consumer read entries (XREADGROUP, blocking while the queue was empty); start
-- each one's job, as `start_job` says. Takes a batch of entries, so a consumer's fetch costs
-- one script call rather than one per job; each job's change is whole and checked on its own,
-- as if it had its own call. A queue paused while the consumer was blocked starts none: each
-- queued job goes back to wait under a new entry (`enqueue`), for whoever runs it after the
-- pause. Nor does a queue whose jobs now wait in the ordered backlog: each read job moves
-- there, for the consumer's next take.
-- KEYS[1] jobs stream  KEYS[2] events stream
-- KEYS[1+2i] job hash  KEYS[2+2i] job events stream, for the i-th entry (i = 1..n)
-- ARGV[5] consumer name  ARGV[6] '1' to return each job's trace context too ('' not)
-- ARGV[7] the consumer's gated job types, JSON (see `start_job`), '' for none
-- ARGV[7+i] the i-th entry id
-- Returns, per entry in order, {'started', attempt, type, payload, timeout_s, children[,
-- trace]} or {'skipped', reason}.
--@include common
--@include start_job

local now = tostring(now_ms())
local results = {}
local traced = ARGV[6] == '1'
local gates = ARGV[7] ~= '' and cjson.decode(ARGV[7]) or nil
local paused = #ARGV > 7 and redis.call('EXISTS', queue_key(KEYS[3], PAUSED_SUFFIX)) == 1
local base = #ARGV > 7 and queue_key(KEYS[3], '')
local ordered = base and redis.call('GET', base .. LEAD_SUFFIX) == ORDERED_LEAD
for i = 1, #ARGV - 7 do
  local job_key, entry_id = KEYS[1 + 2 * i], ARGV[7 + i]
  if paused then
    local j = redis.call('HMGET', job_key, 'status', 'entry_id', 'id', 'type', 'attempt')
    end_delivery(KEYS[1], entry_id)
    if j[1] == QUEUED and j[2] == entry_id then enqueue(KEYS[1], job_key, j[3], j[4], j[5]) end
    results[i] = {'skipped', 'paused'}
  elseif ordered and (redis.call('HGET', job_key, 'released') or '') == '' then
    -- The queue turned to its ordered backlog (see `route`) while this entry waited in the
    -- stream: it goes there too, and the consumer takes in order (a job of a higher
    -- priority, or another tenant's turn, may come first). Not a job a rate gate let go
    -- for its turn: that one was taken in order already, and its consumer starts it now.
    backlog_move(base, KEYS[1], job_key, entry_id)
    results[i] = {'skipped', 'ordered'}
  else
    results[i] = start_job(KEYS[1], KEYS[2], job_key, KEYS[2 + 2 * i], entry_id, ARGV[5], now,
      traced, gates)
  end
end
return results
