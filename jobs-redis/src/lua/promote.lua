-- Moves due scheduled and retry jobs to their queue's ready list.
-- KEYS[1] scheduled zset, KEYS[2] retry zset, KEYS[3] queue-name set.
-- ARGV[1] key prefix ("{ns}:"), ARGV[2] due-by ms (or 'now'), ARGV[3] max per set.
-- A payload without a readable "queue" goes to "default", where the worker
-- dead-letters it with its reason. Returns how many moved.
local until_ms = ARGV[2]
if until_ms == 'now' then
  until_ms = now_millis()
end
local moved = 0
for k = 1, 2 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', until_ms, 'LIMIT', 0, tonumber(ARGV[3]))
  for _, payload in ipairs(due) do
    -- Queued before it leaves the set (see put_back.lua).
    to_queue(ARGV[1], KEYS[3], payload)
    redis.call('ZREM', KEYS[k], payload)
    moved = moved + 1
  end
end
return moved
