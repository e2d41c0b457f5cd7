-- Extends leases still held. KEYS[1] deadline zset, KEYS[2] lease hash.
-- ARGV[1] lease ms, then lease tokens. Returns 1 (held) or 0 per lease.
local deadline = string.format('%d', now_millis() + tonumber(ARGV[1]))
local held = {}
for i = 2, #ARGV do
  if holds(KEYS[2], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i])
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
return held
