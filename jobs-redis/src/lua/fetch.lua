-- Leases up to ARGV[3] ready jobs, trying queues in the order given.
-- KEYS[1] in-flight hash (id -> token "\n" queue "\n" payload), KEYS[2] deadline zset,
-- KEYS[3] lease sequence counter, KEYS[4] cancellation zset, KEYS[5..4+n] the ready
-- lists in order, KEYS[5+n..4+2n] their wake lists.
-- ARGV[1] worker id, ARGV[2] lease ms, ARGV[3] max in all, ARGV[3+i] max from queue i,
-- ARGV[3+n+i] name of queue i (n = (#KEYS - 4) / 2).
-- A queue left non-empty gets a wake token, so that other idle workers join in.
-- Returns the number of cancellation requests (ZCARD: the client looks up the
-- fetched jobs only when it is not 0), then id, queue, payload, token for each job.
local now_ms = now_millis()
-- Numbers are formatted once as integers: Lua's default number-to-string is a costly float print.
local deadline = string.format('%d', now_ms + tonumber(ARGV[2]))
local left = tonumber(ARGV[3])
local n = (#KEYS - 4) / 2
local out = { string.format('%d', pending_cancels(KEYS[4], now_ms)) }
for i = 1, n do
  if left <= 0 then break end
  local take = math.min(tonumber(ARGV[3 + i]), left)
  local items = redis.call('LPOP', KEYS[4 + i], take)
  if items then
    local name = ARGV[3 + n + i]
    local last = redis.call('INCRBY', KEYS[3], #items)
    local fields, scores = {}, {}
    for j, payload in ipairs(items) do
      local id = string.format('%d', last - #items + j)
      local token = ARGV[1] .. ':' .. id
      fields[#fields + 1] = id
      fields[#fields + 1] = token .. '\n' .. name .. '\n' .. payload
      scores[#scores + 1] = deadline
      scores[#scores + 1] = id
      out[#out + 1] = id
      out[#out + 1] = name
      out[#out + 1] = payload
      out[#out + 1] = token
    end
    redis.call('HSET', KEYS[1], unpack(fields))
    redis.call('ZADD', KEYS[2], unpack(scores))
    left = left - #items
    if #items == take and redis.call('LLEN', KEYS[4 + i]) > 0 and redis.call('LLEN', KEYS[4 + n + i]) == 0 then
      redis.call('RPUSH', KEYS[4 + n + i], '1')
    end
  end
end
return out
