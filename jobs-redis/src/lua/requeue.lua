-- Moves chosen jobs of the scheduled, retry or dead set to their queues, to run now.
-- KEYS[1] the set (a zset), KEYS[2] queue-name set, KEYS[3] results index.
-- ARGV[1] key prefix ("{ns}:"), ARGV[2] '1' to forget each job's stored outcome
-- (a dead job's: its waiters then wait for the new run), ARGV[3..] the payloads, as listed.
-- A payload no longer in the set (it ran, moved or was removed) is skipped, so a
-- job is never queued twice. Returns how many moved.
local moved = 0
for i = 3, #ARGV do
  local payload = ARGV[i]
  -- Queued before it leaves the set (see put_back.lua).
  if redis.call('ZSCORE', KEYS[1], payload) then
    local job = to_queue(ARGV[1], KEYS[2], payload)
    redis.call('ZREM', KEYS[1], payload)
    if ARGV[2] == '1' and job and type(job.jid) == 'string' and job.jid ~= '' then
      redis.call('DEL', ARGV[1] .. 'result:' .. job.jid, ARGV[1] .. 'done:' .. job.jid)
      redis.call('ZREM', KEYS[3], job.jid)
    end
    moved = moved + 1
  end
end
return moved
