-- The live nodes and their figures; moves nodes that are gone to the gone set.
-- KEYS[1] the nodes hash, KEYS[2] the gone set (id -> when it was found gone, ms). Both carry
-- the same hash tag on a Redis Cluster, and so do the liveness keys.
-- ARGV: 1 prefix of node liveness keys, 2 now (ms), 3 how long a gone id is remembered (ms).
-- Returns {{id1, stats1, id2, stats2, ...}, {gone1, gone2, ...}}: stats as each node wrote
-- them ('' for an id that keeps shared state alive but is no node, e.g. a Pusher store).
local live = {}
for _, id in ipairs(redis.call('HKEYS', KEYS[1])) do
  local stats = redis.call('GET', ARGV[1] .. id)
  if stats then
    live[#live + 1] = id
    live[#live + 1] = stats
  else
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZADD', KEYS[2], ARGV[2], id)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
-- A bound, should nodes come and go in a loop: the most recent thousand.
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1001)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {live, redis.call('ZRANGE', KEYS[2], 0, -1)}
