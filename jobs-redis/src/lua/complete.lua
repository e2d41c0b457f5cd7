-- Removes finished jobs whose leases still hold.
-- KEYS[1] in-flight hash, KEYS[2] deadline zset, KEYS[3] lease hash.
-- ARGV: per lease, its token, how many jobs (m), then their m in-flight fields.
-- Returns per lease 1 when it held (jobs of it removed), 0 when stale: its token
-- is gone, or none of its jobs was still in flight (settled or put back already).
local held = {}
local i = 1
while i <= #ARGV do
  local token, m = ARGV[i], tonumber(ARGV[i + 1])
  local removed = 0
  if holds(KEYS[3], token) then
    removed = spread('HDEL', KEYS[1], ARGV, i + 2, i + 1 + m)
    release(KEYS[3], KEYS[2], token, removed)
  end
  if removed > 0 then
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
  i = i + 2 + m
end
return held
