-- Leases up to ARGV[3] ready jobs, trying queues in the order given, all under one lease.
-- KEYS[1] in-flight hash, KEYS[2] deadline zset, KEYS[3] lease counter, KEYS[4]
-- cancellation zset, KEYS[5] lease hash, KEYS[6..5+n] the ready lists in order,
-- KEYS[6+n..5+2n] their wake lists.
-- ARGV[1] worker id, ARGV[2] lease ms, ARGV[3] max in all, ARGV[3+i] max from queue i,
-- ARGV[3+n+i] name of queue i (n = (#KEYS - 5) / 2), ARGV[4+2n] the lease number to
-- go above (see next_lease).
-- A queue left non-empty gets a wake token, so that other idle workers join in; an
-- empty one loses its tokens.
-- Returns the number of cancellation requests (ZCARD: the client looks up the
-- fetched jobs only when it is not 0), the lease token and number ('' when no job
-- was found), then per queue with jobs: its name, how many, and their payloads;
-- job j of the reply (1-based, across queues) is in flight as field "L.j".
local now_ms = now_millis()
local left = tonumber(ARGV[3])
local n = (#KEYS - 5) / 2
local out = { string.format('%d', pending_cancels(KEYS[4], now_ms)), '', '' }
local fields, count, prefix = {}, 0, nil
for i = 1, n do
  if left <= 0 then break end
  local take = math.min(tonumber(ARGV[3 + i]), left)
  local items = redis.call('LPOP', KEYS[5 + i], take)
  if items then
    if not prefix then
      out[3] = next_lease(KEYS[3], ARGV[4 + 2 * n])
      prefix = out[3] .. '.'
    end
    local name = ARGV[3 + n + i]
    local head = name .. '\n'
    out[#out + 1] = name
    out[#out + 1] = string.format('%d', #items)
    for _, payload in ipairs(items) do
      count = count + 1
      fields[#fields + 1] = prefix .. count
      fields[#fields + 1] = head .. payload
      out[#out + 1] = payload
    end
    left = left - #items
    if #items == take and redis.call('LLEN', KEYS[5 + i]) > 0 and redis.call('LLEN', KEYS[5 + n + i]) == 0 then
      redis.call('RPUSH', KEYS[5 + n + i], '1')
    end
  else
    -- An empty queue has no job to wake anyone for: tokens left (a producer that
    -- pushes a token without trimming) would only send idle workers round.
    redis.call('DEL', KEYS[5 + n + i])
  end
end
if count > 0 then
  out[2] = lease_jobs(ARGV[1], out[3], count, fields, now_ms, ARGV[2])
end
return out
