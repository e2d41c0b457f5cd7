-- Frees a uniqueness lock while the job that took it holds it (the job was
-- cancelled): an identical job may then be enqueued at once. A lock taken by
-- another job since (this one's had run out) stays.
-- KEYS[1] the queue-name set, unused: declared so that a cluster routes the call
-- to the namespace's node (or answers MOVED). ARGV[1] unique-lock key prefix,
-- ARGV[2] the lock's key (name and arguments, as push.lua hashes it), ARGV[3] the
-- jid that took it. Returns 1 when freed.
local key = ARGV[1] .. redis.sha1hex(ARGV[2])
if redis.call('GET', key) == ARGV[3] then
  return redis.call('DEL', key)
end
return 0
