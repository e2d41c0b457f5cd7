-- Removes finished jobs whose lease tokens still hold them.
-- KEYS[1] in-flight hash, KEYS[2] deadline zset; ARGV: id, token pairs.
-- Returns how many were stale.
local stale = 0
for i = 1, #ARGV, 2 do
  local stored = redis.call('HGET', KEYS[1], ARGV[i])
  local token = ARGV[i + 1]
  if stored and string.sub(stored, 1, #token + 1) == token .. '\n' then
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
  else
    stale = stale + 1
  end
end
return stale
