-- Set how many sockets this node has on each of a batch of streams, and return where each
-- stream stands. Atomic with publish.lua: a publish before this call is at or below the
-- returned number; a publish after it reaches this node.
--
-- KEYS: meta1, hist1, meta2, hist2, ...
-- ARGV: 1 node field ('n:<id>'), 2 the meta's life while a node has followers (s), 3 fresh
--       generation, 4 boot id ('' = Redis is durable, '?' = this server's run_id), 5 the
--       meta's life once no node has followers (s), then one follower count per stream
-- On a Redis Cluster every stream of one call is in one slot.
-- Returns one "gen:seq" per stream ("" generation: no stream and no follower).
local boot = ARGV[4]
if boot == '?' then boot = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') end
local out = {}
for i = 1, #KEYS / 2 do
  local meta, hist = KEYS[2 * i - 1], KEYS[2 * i]
  local count = tonumber(ARGV[5 + i])
  local m = redis.call('HMGET', meta, 'e', 'b', 's')
  local gen, seq = m[1], tonumber(m[3]) or 0
  if count > 0 and ((not gen) or (boot ~= '' and m[2] ~= boot)) then
    gen, seq = ARGV[3], 0
    redis.call('DEL', hist)
    redis.call('HSET', meta, 'e', gen, 'b', boot, 's', 0)
  end
  if count > 0 then
    redis.call('HSET', meta, ARGV[1], count)
    redis.call('EXPIRE', meta, ARGV[2])
  elseif redis.call('HDEL', meta, ARGV[1]) == 1 then
    -- The last follower anywhere gone: the meta lives as long as a publish leaves it.
    local others = false
    for _, f in ipairs(redis.call('HKEYS', meta)) do
      if string.sub(f, 1, 2) == 'n:' then others = true; break end
    end
    if not others then redis.call('EXPIRE', meta, ARGV[5]) end
  end
  out[i] = (gen or '') .. ':' .. seq
end
return out
