-- Returns unfinished jobs to the head of their queue (a shutdown; not an attempt).
-- KEYS[1] in-flight hash, KEYS[2] deadline zset. ARGV[1] key prefix, then id, token pairs.
-- Returns how many leases were stale. Pushing the last first keeps the batch's order.
local stale = 0
for i = #ARGV - 1, 2, -2 do
  local stored = redis.call('HGET', KEYS[1], ARGV[i])
  local token = ARGV[i + 1]
  if held_by(stored, token) then
    local token_end = #token + 1
    local queue_end = string.find(stored, '\n', token_end + 1, true)
    local queue = string.sub(stored, token_end + 1, queue_end - 1)
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call('LPUSH', ARGV[1] .. 'q:' .. queue, string.sub(stored, queue_end + 1))
    local wake = ARGV[1] .. 'wake:' .. queue
    if redis.call('LLEN', wake) == 0 then redis.call('RPUSH', wake, '1') end
  else
    stale = stale + 1
  end
end
return stale
