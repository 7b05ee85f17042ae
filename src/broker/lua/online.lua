-- Sockets a stream has over every live node; forgets nodes that are gone.
-- KEYS[1] meta hash. ARGV[1] prefix of node liveness keys ('<prefix>:alive:').
local n = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local f = fields[i]
  if string.sub(f, 1, 2) == 'n:' then
    if redis.call('EXISTS', ARGV[1] .. string.sub(f, 3)) == 1 then
      n = n + (tonumber(fields[i + 1]) or 0)
    else
      redis.call('HDEL', KEYS[1], f)
    end
  end
end
return n
