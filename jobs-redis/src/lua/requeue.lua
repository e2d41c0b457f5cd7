-- Moves chosen jobs of the scheduled, retry or dead set to their queues, to run now.
-- KEYS[1] the set (a zset), KEYS[2] queue-name set.
-- ARGV[1] key prefix ("{ns}:"), ARGV[2..] the payloads, as listed.
-- A payload no longer in the set (it ran, moved or was removed) is skipped, so a
-- job is never queued twice. Returns how many moved.
local moved = 0
for i = 2, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    to_queue(ARGV[1], KEYS[2], ARGV[i])
    moved = moved + 1
  end
end
return moved
