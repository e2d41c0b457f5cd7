-- Pushes a batch of jobs, all in one atomic step, with the `enqueued` event of
-- each job it stores (so no reader sees a job's `started` before it).
-- KEYS[1] scheduled zset, KEYS[2] queue-name set, KEYS[3] event stream, then for
--   each distinct queue its ready list and its wake list: KEYS[3+2i-1], KEYS[3+2i].
-- ARGV[1] unique-lock key prefix, ARGV[2] event stream cap (MAXLEN ~), ARGV[3] the
--   events' age limit (ms; older entries are trimmed, MINID), ARGV[4] Q (distinct
--   queues), ARGV[5..4+Q] queue names, then 7 values per job: queue index
--   (1..Q), run_at ms (0: due now; the client decides, so that a job due now never
--   waits for a promotion), payload, unique key ('' for none), unique ttl ms, its
--   event JSON ('' for none), and its jid when it takes a lock ('' otherwise: the
--   lock's value, so that a cancellation frees only the lock its job holds).
-- Returns the 0-based indices of jobs refused by a held uniqueness lock.
local q = tonumber(ARGV[4])
local first = 5 + q
local evented = false
local refused = {}
local woken = {}
local index = 0
for b = first, #ARGV, 7 do
  local qi = tonumber(ARGV[b])
  local at = tonumber(ARGV[b + 1])
  local payload = ARGV[b + 2]
  local ukey = ARGV[b + 3]
  local fresh = true
  if ukey ~= '' then
    fresh = redis.call('SET', ARGV[1] .. redis.sha1hex(ukey), ARGV[b + 6], 'NX', 'PX', ARGV[b + 4])
  end
  if fresh then
    if at > 0 then
      redis.call('ZADD', KEYS[1], at, payload)
    else
      redis.call('RPUSH', KEYS[2 + 2 * qi], payload)
      woken[qi] = true
    end
    if ARGV[b + 5] ~= '' then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[b + 5])
      evented = true
    end
  else
    refused[#refused + 1] = index
  end
  index = index + 1
end
for qi = 1, q do
  redis.call('SADD', KEYS[2], ARGV[4 + qi])
  if woken[qi] and redis.call('LLEN', KEYS[3 + 2 * qi]) == 0 then
    redis.call('RPUSH', KEYS[3 + 2 * qi], '1')
  end
end
if evented then
  -- Entry ids are their times (ms): an id below the limit is an event too old to keep.
  local oldest = now_millis() - tonumber(ARGV[3])
  if oldest > 0 then redis.call('XTRIM', KEYS[3], 'MINID', string.format('%d', oldest)) end
end
return refused
