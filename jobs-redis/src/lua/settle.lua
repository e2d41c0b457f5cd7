-- Moves one leased job, as a new payload, to the retry or scheduled set ('later')
-- or to the dead set ('dead'), if the lease token still holds it.
-- KEYS[1] in-flight hash, KEYS[2] deadline zset, KEYS[3] the target zset.
-- ARGV[1] id, ARGV[2] token, ARGV[3] 'later' | 'dead', ARGV[4] payload,
-- ARGV[5] due ms (later), ARGV[6] dead max count, ARGV[7] dead max age ms.
-- Returns 1 when applied, 0 when the lease was stale.
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if not stored then return 0 end
local token_end = string.find(stored, '\n', 1, true)
if not token_end or string.sub(stored, 1, token_end - 1) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local payload = ARGV[4]
if ARGV[3] == 'later' then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[5]), payload)
else
  local now_ms = now_millis()
  redis.call('ZADD', KEYS[3], now_ms, payload)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now_ms - tonumber(ARGV[7])))
  local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[6])
  if excess > 0 then redis.call('ZREMRANGEBYRANK', KEYS[3], 0, excess - 1) end
end
return 1
