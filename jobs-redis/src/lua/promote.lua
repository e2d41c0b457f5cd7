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
    local ok, job = pcall(cjson.decode, payload)
    local queue = 'default'
    if ok and type(job) == 'table' and type(job.queue) == 'string' and job.queue ~= '' then queue = job.queue end
    redis.call('ZREM', KEYS[k], payload)
    redis.call('RPUSH', ARGV[1] .. 'q:' .. queue, payload)
    redis.call('SADD', KEYS[3], queue)
    local wake = ARGV[1] .. 'wake:' .. queue
    if redis.call('LLEN', wake) == 0 then redis.call('RPUSH', wake, '1') end
    moved = moved + 1
  end
end
return moved
