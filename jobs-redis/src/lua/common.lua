-- Helpers every script shares; scripts.rs puts this file in front of each one.

-- The server's clock in milliseconds.
local function now_millis()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

-- Whether an in-flight entry ("token\nqueue\npayload") is still held by `token`.
local function held_by(stored, token)
  return stored and string.sub(stored, 1, #token + 1) == token .. '\n'
end

-- Cancellation requests that still hold: expired ones are dropped first, so that
-- an old request does not cost every later fetch a lookup (ZCARD alone when none).
local function pending_cancels(key, now_ms)
  if redis.call('ZCARD', key) == 0 then return 0 end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  return redis.call('ZCARD', key)
end

