-- Stores outcomes and appends events, all in one atomic step.
-- KEYS[1] event stream, KEYS[2] results index (job id scored by expiry, ms),
-- then per outcome i its result key KEYS[1+2i] and its wake-up list KEYS[2+2i].
-- ARGV[1] stream cap (MAXLEN ~), ARGV[2] results cap, ARGV[3] key prefix `{ns}:`,
-- ARGV[4] n (outcomes), ARGV[5] the events' age limit (ms; entries older are
-- trimmed, MINID), then 4 values per outcome: outcome JSON, ttl ms, '1' when
-- final, job id; then one JSON per event.
-- A final outcome leaves one token on its wake-up list, expiring with the outcome;
-- any other outcome removes the token, so a token means "the stored outcome is final".
-- Beyond the results cap, the outcomes closest to expiring are dropped with their
-- tokens (keys named from the prefix: same hash tag, same slot).
local now_ms = now_millis()
local n = tonumber(ARGV[4])
for i = 1, n do
  local a = 6 + 4 * (i - 1)
  local result, done, jid = KEYS[1 + 2 * i], KEYS[2 + 2 * i], ARGV[a + 3]
  local ttl = tonumber(ARGV[a + 1])
  if ttl > 0 then
    redis.call('SET', result, ARGV[a], 'PX', ttl)
    redis.call('ZADD', KEYS[2], string.format('%d', now_ms + ttl), jid)
    if ARGV[a + 2] == '1' then
      if redis.call('LLEN', done) == 0 then redis.call('RPUSH', done, '1') end
      redis.call('PEXPIRE', done, ttl)
    else
      redis.call('DEL', done)
    end
  else
    -- A ttl of 0 keeps nothing: the outcome is gone as soon as it is written.
    redis.call('DEL', result, done)
    redis.call('ZREM', KEYS[2], jid)
  end
end
if n > 0 then
  -- Expired outcomes are gone already; drop their index entries, then enforce the cap.
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
  local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[2])
  if over > 0 then
    local dropped = redis.call('ZPOPMIN', KEYS[2], over)
    for k = 1, #dropped, 2 do
      redis.call('DEL', ARGV[3] .. 'result:' .. dropped[k], ARGV[3] .. 'done:' .. dropped[k])
    end
  end
end
for j = 6 + 4 * n, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[j])
end
local oldest = now_ms - tonumber(ARGV[5])
if #ARGV >= 6 + 4 * n and oldest > 0 then
  -- Entry ids are their times (ms): an id below the limit is an event too old to keep.
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', oldest))
end
return 0
