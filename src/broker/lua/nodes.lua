-- The live nodes and their figures; forgets nodes that are gone.
-- KEYS[1] the nodes hash. ARGV[1] prefix of node liveness keys.
-- Returns {id1, stats1, id2, stats2, ...} (stats as each node wrote them).
local out = {}
for _, id in ipairs(redis.call('HKEYS', KEYS[1])) do
  local stats = redis.call('GET', ARGV[1] .. id)
  if stats then
    out[#out + 1] = id
    out[#out + 1] = stats
  else
    redis.call('HDEL', KEYS[1], id)
  end
end
return out
