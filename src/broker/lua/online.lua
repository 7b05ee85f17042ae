-- Sockets a stream has over every live node; forgets nodes that are gone.
-- KEYS[1] meta hash. ARGV[1] prefix of node liveness keys ('<prefix>:alive:'), or '' on a
-- Redis Cluster (where those keys are in another slot): then ARGV[2..] are the ids of nodes
-- known gone.
local n = 0
local gone = {}
for i = 2, #ARGV do gone[ARGV[i]] = true end
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local f = fields[i]
  if string.sub(f, 1, 2) == 'n:' then
    local node = string.sub(f, 3)
    local alive
    if ARGV[1] ~= '' then
      alive = redis.call('EXISTS', ARGV[1] .. node) == 1
    else
      alive = not gone[node]
    end
    if alive then
      n = n + (tonumber(fields[i + 1]) or 0)
    else
      redis.call('HDEL', KEYS[1], f)
    end
  end
end
return n
