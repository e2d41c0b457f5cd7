-- Extends leases still held. KEYS[1] in-flight hash, KEYS[2] deadline zset.
-- ARGV[1] lease ms, then id, token pairs. Returns 1 (held) or 0 per lease.
local deadline = string.format('%d', now_millis() + tonumber(ARGV[1]))
local held = {}
for i = 2, #ARGV, 2 do
  local stored = redis.call('HGET', KEYS[1], ARGV[i])
  local token = ARGV[i + 1]
  if held_by(stored, token) then
    redis.call('ZADD', KEYS[2], 'XX', deadline, ARGV[i])
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
return held
