-- Stores outcomes and appends events, all in one atomic step.
-- KEYS[1] event stream, then per outcome i its result key KEYS[2i] and its wake-up list KEYS[2i+1].
-- ARGV[1] stream cap (MAXLEN ~), ARGV[2] n (outcomes), then 3 values per outcome:
--   outcome JSON, ttl ms, '1' when final; then one JSON per event.
-- A final outcome leaves one token on its wake-up list, expiring with the outcome;
-- any other outcome removes the token, so a token means "the stored outcome is final".
local n = tonumber(ARGV[2])
for i = 1, n do
  local a = 3 + 3 * (i - 1)
  local result, done = KEYS[2 * i], KEYS[2 * i + 1]
  if tonumber(ARGV[a + 1]) > 0 then
    redis.call('SET', result, ARGV[a], 'PX', ARGV[a + 1])
    if ARGV[a + 2] == '1' then
      if redis.call('LLEN', done) == 0 then redis.call('RPUSH', done, '1') end
      redis.call('PEXPIRE', done, ARGV[a + 1])
    else
      redis.call('DEL', done)
    end
  else
    -- A ttl of 0 keeps nothing: the outcome is gone as soon as it is written.
    redis.call('DEL', result, done)
  end
end
for j = 3 + 3 * n, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[j])
end
return 0
