-- Keeps a message in a uid's offline inbox, under the per-uid and overall bounds, atomically.
-- KEYS[1] the uid's ids by expiry (zset), KEYS[2] the uid's messages (hash),
-- KEYS[3] every kept message as "<uid>\n<id>" by expiry (zset, for the overall bound); absent
-- on a Redis Cluster, where it is in another slot: the caller checks and updates it.
-- ARGV: now_ms, expires_ms, id, message JSON, per_uid, total, uid.
-- The message's `n` is set here from a counter in KEYS[2] (field '#n'): its place in the uid's
-- inbox, the order pages get them in, whichever node kept it.
-- Returns 1 kept (or kept already), -1 the uid's inbox is full, -2 the inbox is full.
local now = ARGV[1]
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(expired))
end
if KEYS[3] then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now) end
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then
  return -1
end
if KEYS[3] and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then
  return -2
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
local entry = cjson.decode(ARGV[4])
entry.n = redis.call('HINCRBY', KEYS[2], '#n', 1)
redis.call('HSET', KEYS[2], ARGV[3], cjson.encode(entry))
if KEYS[3] then redis.call('ZADD', KEYS[3], ARGV[2], ARGV[7] .. '\n' .. ARGV[3]) end
-- Both keys of the uid live as long as its last message.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
redis.call('PEXPIREAT', KEYS[2], last[2])
return 1
