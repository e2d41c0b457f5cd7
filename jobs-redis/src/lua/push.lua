-- Pushes a batch of jobs, all in one atomic step.
-- KEYS[1] scheduled zset, KEYS[2] queue-name set, then for each distinct queue
--   its ready list and its wake list: KEYS[2+2i-1], KEYS[2+2i].
-- ARGV[1] unique-lock key prefix, ARGV[2] Q (distinct queues), ARGV[3..2+Q] queue names,
--   then 5 values per job: queue index (1..Q), run_at ms (0: now), payload,
--   unique key ('' for none), unique ttl ms.
-- Returns the 0-based indices of jobs refused by a held uniqueness lock.
local q = tonumber(ARGV[2])
local first = 3 + q
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local refused = {}
local woken = {}
local index = 0
for b = first, #ARGV, 5 do
  local qi = tonumber(ARGV[b])
  local at = tonumber(ARGV[b + 1])
  local payload = ARGV[b + 2]
  local ukey = ARGV[b + 3]
  local fresh = true
  if ukey ~= '' then
    fresh = redis.call('SET', ARGV[1] .. redis.sha1hex(ukey), '1', 'NX', 'PX', ARGV[b + 4])
  end
  if fresh then
    if at > now_ms then
      redis.call('ZADD', KEYS[1], at, payload)
    else
      redis.call('RPUSH', KEYS[1 + 2 * qi], payload)
      woken[qi] = true
    end
  else
    refused[#refused + 1] = index
  end
  index = index + 1
end
for qi = 1, q do
  redis.call('SADD', KEYS[2], ARGV[2 + qi])
  if woken[qi] and redis.call('LLEN', KEYS[2 + 2 * qi]) == 0 then
    redis.call('RPUSH', KEYS[2 + 2 * qi], '1')
  end
end
return refused
