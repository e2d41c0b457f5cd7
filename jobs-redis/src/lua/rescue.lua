-- Takes over the jobs of expired leases (their worker died), whole leases at a
-- time until at least ARGV[3] jobs, leasing them to a new worker under one lease.
-- KEYS[1] in-flight hash, KEYS[2] deadline zset, KEYS[3] lease counter,
-- KEYS[4] cancellation zset, KEYS[5] lease hash, KEYS[6] the per-job deadlines of
-- workers from before leases covered a fetch (id -> lease end; their in-flight
-- entries read "token\nqueue\npayload"), taken over too while room is left.
-- ARGV[1] worker id, ARGV[2] lease ms, ARGV[3] max jobs (a lease is never split),
-- ARGV[4] the lease number to go above (see next_lease).
-- Returns what fetch returns: requests, token, number, then per job its queue, 1, payload.
local now_ms = now_millis()
local max = tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms, 'LIMIT', 0, max)
local out = { string.format('%d', pending_cancels(KEYS[4], now_ms)), '', '' }
local taken = {}
for _, old in ipairs(expired) do
  if #taken >= max then break end
  local number, size = string.match(old, '/(%d+)/(%d+)$')
  for j = 1, tonumber(size or 0) do
    local field = number .. '.' .. j
    local stored = redis.call('HGET', KEYS[1], field)
    if stored then
      redis.call('HDEL', KEYS[1], field)
      taken[#taken + 1] = stored
    end
  end
  redis.call('HDEL', KEYS[5], old)
  redis.call('ZREM', KEYS[2], old)
end
if #taken < max then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now_ms, 'LIMIT', 0, max - #taken)) do
    local stored = redis.call('HGET', KEYS[1], id)
    redis.call('ZREM', KEYS[6], id)
    redis.call('HDEL', KEYS[1], id)
    if stored then
      -- Without its token (never written so), the entry is taken as it is, not dropped.
      local token_end = string.find(stored, '\n', 1, true)
      taken[#taken + 1] = token_end and string.sub(stored, token_end + 1) or ('default\n' .. stored)
    end
  end
end
if #taken > 0 then
  out[3] = next_lease(KEYS[3], ARGV[4])
  local fields = {}
  for j, stored in ipairs(taken) do
    local cut = string.find(stored, '\n', 1, true)
    fields[#fields + 1] = out[3] .. '.' .. j
    fields[#fields + 1] = stored
    -- An entry without its queue (never written so) goes to `default` as it is.
    out[#out + 1] = cut and string.sub(stored, 1, cut - 1) or 'default'
    out[#out + 1] = '1'
    out[#out + 1] = cut and string.sub(stored, cut + 1) or stored
  end
  out[2] = lease_jobs(ARGV[1], out[3], #taken, fields, now_ms, ARGV[2])
end
return out
