-- Removes finished jobs whose lease tokens still hold them.
-- KEYS[1] in-flight hash, KEYS[2] deadline zset; ARGV: id, token pairs.
-- Returns 1 per lease that held its job (removed), 0 per stale one.
local held = {}
for i = 1, #ARGV, 2 do
  local stored = redis.call('HGET', KEYS[1], ARGV[i])
  local token = ARGV[i + 1]
  if held_by(stored, token) then
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
return held
