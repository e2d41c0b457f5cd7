-- Returns unfinished jobs to the head of their queue (a shutdown; not an attempt).
-- KEYS[1] in-flight hash, KEYS[2] deadline zset, KEYS[3] lease hash.
-- ARGV[1] key prefix, then in-flight field, lease token pairs in fetch order.
-- Returns how many were stale. Pushing the last first keeps the batch's order.
local stale = 0
for i = #ARGV - 1, 2, -2 do
  local stored = holds(KEYS[3], ARGV[i + 1]) and redis.call('HGET', KEYS[1], ARGV[i])
  local cut = stored and string.find(stored, '\n', 1, true)
  if cut then
    -- The queue first: should Redis refuse it (a Redis Cluster slot on its way to
    -- another node), the script stops before anything is removed. (Redis does not
    -- undo a failed script's earlier writes.)
    local queue = string.sub(stored, 1, cut - 1)
    redis.call('LPUSH', ARGV[1] .. 'q:' .. queue, string.sub(stored, cut + 1))
    local wake = ARGV[1] .. 'wake:' .. queue
    if redis.call('LLEN', wake) == 0 then redis.call('RPUSH', wake, '1') end
    redis.call('HDEL', KEYS[1], ARGV[i])
    release(KEYS[3], KEYS[2], ARGV[i + 1], 1)
  else
    stale = stale + 1
  end
end
return stale
