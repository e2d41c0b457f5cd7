-- Takes over jobs whose lease expired, leasing them to a new worker.
-- KEYS[1] in-flight hash, KEYS[2] deadline zset, KEYS[3] lease sequence counter,
-- KEYS[4] cancellation zset.
-- ARGV[1] worker id, ARGV[2] lease ms, ARGV[3] max.
-- Returns the number of cancellation requests (ZCARD), then id, queue, payload,
-- token for each job taken over.
local now_ms = now_millis()
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[3]))
local out = { string.format('%d', pending_cancels(KEYS[4], now_ms)) }
for _, old in ipairs(expired) do
  local stored = redis.call('HGET', KEYS[1], old)
  redis.call('ZREM', KEYS[2], old)
  redis.call('HDEL', KEYS[1], old)
  local token_end = stored and string.find(stored, '\n', 1, true)
  local queue_end = token_end and string.find(stored, '\n', token_end + 1, true)
  if queue_end then
    local name = string.sub(stored, token_end + 1, queue_end - 1)
    local payload = string.sub(stored, queue_end + 1)
    local id = string.format('%d', redis.call('INCR', KEYS[3]))
    local token = ARGV[1] .. ':' .. id
    redis.call('HSET', KEYS[1], id, token .. '\n' .. name .. '\n' .. payload)
    redis.call('ZADD', KEYS[2], string.format('%d', now_ms + tonumber(ARGV[2])), id)
    out[#out + 1] = id
    out[#out + 1] = name
    out[#out + 1] = payload
    out[#out + 1] = token
  end
end
return out
