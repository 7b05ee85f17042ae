-- Publish one message: number it, keep it, and send it to every node with followers.
-- One round trip, atomic. Modelled on centrifuge's broker_history_add_stream.lua.
--
-- KEYS[1] meta hash   (e = generation, b = boot id, s = last number, n:<node> = followers there)
-- KEYS[2] history stream (entry id <seq>-0, fields t = unix ms, d = payload)
-- KEYS[3] optional idempotency key
-- ARGV: 1 payload, 2 history size, 3 history ttl ms, 4 meta ttl s, 5 fresh generation,
--       6 boot id ('' = Redis is durable, '?' = this server's run_id), 7 node channel prefix
--       ('' on a Redis Cluster), 8 idempotency ttl s; on a Redis Cluster also 9 the stream's
--       shard channel, then the ids of nodes known gone.
-- Returns "gen:seq:sockets:retained", or "r:" .. that for a repeated idempotency key.
--
-- One Redis: the message goes to each node with followers, on the node's own channel, and a
-- node nobody listens for any more is dropped. A Redis Cluster: it goes once to the stream's
-- shard channel (in this key's slot, so it crosses only this shard), which every node with
-- followers subscribes to; nodes known gone are dropped.
if KEYS[3] then
  local prev = redis.call('GET', KEYS[3])
  if prev then return 'r:' .. prev end
end
local keep = tonumber(ARGV[2])
local boot = ARGV[6]
if boot == '?' then boot = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') end
local m = redis.call('HMGET', KEYS[1], 'e', 'b')
local gen = m[1]
if (not gen) or (boot ~= '' and m[2] ~= boot) then
  if (not gen) and keep == 0 then
    -- No stream, no follower anywhere (presence would have made the stream), no history.
    return ':0:0:0'
  end
  -- A new generation: history of the old one must not survive it.
  gen = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', gen, 'b', boot, 's', 0)
end
local seq = redis.call('HINCRBY', KEYS[1], 's', 1)
-- Longer, never shorter: presence may have set a longer life (a stream with followers).
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
local retained = 0
if keep > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', keep, seq .. '-0', 't', now, 'd', ARGV[1])
  if type(ok) == 'table' and ok.err then
    -- Entries above this number (a store rolled back under us): they belong to no one.
    redis.call('DEL', KEYS[2])
    redis.call('XADD', KEYS[2], 'MAXLEN', keep, seq .. '-0', 't', now, 'd', ARGV[1])
  end
  -- Messages are appended in time order, so the expired ones are a prefix. Readers skip
  -- them anyway; dropping them every 8th publish keeps memory honest at little cost.
  if seq % 8 == 0 then
    local cutoff = now - tonumber(ARGV[3])
    for _ = 1, 16 do
      local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
      if head and tonumber(head[2][2]) < cutoff then
        redis.call('XDEL', KEYS[2], head[1])
      else
        break
      end
    end
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  retained = 1
end
local msg = gen .. ':' .. seq .. ':' .. ARGV[1]
local sockets = 0
local fields = redis.call('HGETALL', KEYS[1])
if ARGV[7] ~= '' then
  for i = 1, #fields, 2 do
    local f = fields[i]
    if string.sub(f, 1, 2) == 'n:' then
      local c = tonumber(fields[i + 1]) or 0
      -- A node whose channel has no subscriber is gone (or reconnecting: it announces again).
      if c > 0 and redis.call('PUBLISH', ARGV[7] .. string.sub(f, 3), msg) > 0 then
        sockets = sockets + c
      else
        redis.call('HDEL', KEYS[1], f)
      end
    end
  end
else
  local gone = {}
  for i = 10, #ARGV do gone['n:' .. ARGV[i]] = true end
  for i = 1, #fields, 2 do
    local f = fields[i]
    if string.sub(f, 1, 2) == 'n:' then
      if gone[f] then
        redis.call('HDEL', KEYS[1], f)
      else
        sockets = sockets + (tonumber(fields[i + 1]) or 0)
      end
    end
  end
  redis.call('SPUBLISH', ARGV[9], msg)
end
local result = gen .. ':' .. seq .. ':' .. sockets .. ':' .. retained
if KEYS[3] then redis.call('SET', KEYS[3], result, 'EX', ARGV[8]) end
return result
