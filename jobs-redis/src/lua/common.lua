-- Helpers every script shares; scripts.rs puts this file in front of each one.
--
-- Leases are taken per fetch, not per job: a fetch of k jobs takes lease number L
-- and writes one lease record, token "<worker>/<L>/<k>", in the lease hash
-- (token -> jobs not yet settled) and in the deadline zset (token -> lease end),
-- and one in-flight entry per job, field "L.j" (j = 1..k) -> "queue\npayload".
-- The lease record is the fence: while it exists, every job of the lease that its
-- holder has not settled is still in flight; a rescue takes all of them and the
-- record in one step, so a holder whose record is gone has lost all its jobs.

-- The server's clock in milliseconds.
local function now_millis()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

-- Whether the lease `token` still holds (its record exists in the lease hash).
local function holds(leases, token)
  return redis.call('HEXISTS', leases, token) == 1
end

-- Counts `n` jobs of lease `token` as settled; the lease ends with its last job.
local function release(leases, deadlines, token, n)
  if n > 0 and redis.call('HINCRBY', leases, token, -n) <= 0 then
    redis.call('HDEL', leases, token)
    redis.call('ZREM', deadlines, token)
  end
end

-- Runs `command key list[from..to]` in chunks that Lua's stack can unpack (pairs
-- stay together: each chunk has an even length). Returns the sum of the replies.
local function spread(command, key, list, from, to)
  local total = 0
  while from <= to do
    local last = math.min(from + 999, to)
    total = total + redis.call(command, key, unpack(list, from, last))
    from = last + 1
  end
  return total
end

-- The next lease number from `counter`, above `floor` (the highest number the calling
-- backend was given; '0' for none): Redis that lost its counter (a restart without its
-- data, FLUSHALL, a failover to a replica behind) would otherwise count from 1 again,
-- and a worker still running a job under that number would settle the new lease's
-- jobs with its old token.
local function next_lease(counter, floor)
  local number = redis.call('INCR', counter)
  local lowest = tonumber(floor) or 0
  if number <= lowest then
    number = lowest + 1
    redis.call('SET', counter, string.format('%d', number))
  end
  return string.format('%d', number)
end

-- Leases the jobs of `fields` (in-flight field, value pairs; `count` jobs) to
-- `worker` under lease `number`, for `lease_ms` from `now_ms`. For fetch.lua and
-- rescue.lua, which share KEYS[1] in-flight hash, KEYS[2] deadline zset and
-- KEYS[5] lease hash. Returns the lease token.
local function lease_jobs(worker, number, count, fields, now_ms, lease_ms)
  local token = worker .. '/' .. number .. '/' .. count
  spread('HSET', KEYS[1], fields, 1, #fields)
  redis.call('HSET', KEYS[5], token, count)
  redis.call('ZADD', KEYS[2], string.format('%d', now_ms + tonumber(lease_ms)), token)
  return token
end

-- Cancellation requests that still hold: expired ones are dropped first, so that
-- an old request does not cost every later fetch a lookup (ZCARD alone when none).
local function pending_cancels(key, now_ms)
  if redis.call('ZCARD', key) == 0 then return 0 end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  return redis.call('ZCARD', key)
end

-- Puts `payload`, taken out of the scheduled, retry or dead set, at the end of the
-- queue it names ('default' when it names none or cannot be read: the worker
-- dead-letters it there with its reason), names the queue in the queue-name set
-- `queues` and leaves its one wake-up token. `prefix` is the key prefix "{ns}:".
-- Returns the decoded payload, or nil when it cannot be read.
local function to_queue(prefix, queues, payload)
  local ok, job = pcall(cjson.decode, payload)
  if not ok or type(job) ~= 'table' then job = nil end
  local queue = 'default'
  if job and type(job.queue) == 'string' and job.queue ~= '' then queue = job.queue end
  redis.call('RPUSH', prefix .. 'q:' .. queue, payload)
  redis.call('SADD', queues, queue)
  local wake = prefix .. 'wake:' .. queue
  if redis.call('LLEN', wake) == 0 then redis.call('RPUSH', wake, '1') end
  return job
end
