-- Moves one leased job, as a new payload, to the retry or scheduled set ('later')
-- or to the dead set ('dead'), if its lease still holds it.
-- KEYS[1] in-flight hash, KEYS[2] deadline zset, KEYS[3] lease hash, KEYS[4] the target zset.
-- ARGV[1] in-flight field, ARGV[2] lease token, ARGV[3] 'later' | 'dead', ARGV[4] payload,
-- ARGV[5] due ms (later), ARGV[6] dead max count, ARGV[7] dead max age ms.
-- Returns 1 when applied, 0 when the lease was stale.
if not holds(KEYS[3], ARGV[2]) or redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
release(KEYS[3], KEYS[2], ARGV[2], 1)
local payload = ARGV[4]
if ARGV[3] == 'later' then
  redis.call('ZADD', KEYS[4], tonumber(ARGV[5]), payload)
else
  local now_ms = now_millis()
  redis.call('ZADD', KEYS[4], now_ms, payload)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. (now_ms - tonumber(ARGV[7])))
  local excess = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[6])
  if excess > 0 then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, excess - 1) end
end
return 1
