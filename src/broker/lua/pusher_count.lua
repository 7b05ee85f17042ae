-- Pusher mode: one node's count of a member (a channel's subscribers, a presence user's
-- sockets), and whether the cluster's total crossed zero.
-- KEYS[1] a hash of '<node>\n<member>' -> count (one per app, or per presence channel).
-- ARGV: 1 this node's id, 2 the member, 3 +1 or -1, 4 the liveness key prefix ('' on a Redis
--       Cluster: then ARGV[5..] are the ids of nodes known gone).
-- Returns 1 when the member had no count on any live node before a +1, or has none left
-- after a -1 (so channel_occupied / member_added, or their opposite, is due); else 0.
local gone = {}
for i = 5, #ARGV do gone[ARGV[i]] = true end
local function alive(node)
  if ARGV[4] ~= '' then return redis.call('EXISTS', ARGV[4] .. node) == 1 end
  return not gone[node]
end
local mine = ARGV[1] .. '\n' .. ARGV[2]
local n = redis.call('HINCRBY', KEYS[1], mine, tonumber(ARGV[3]))
if n <= 0 then redis.call('HDEL', KEYS[1], mine) end
if tonumber(ARGV[3]) > 0 and n > 1 then return 0 end
if tonumber(ARGV[3]) < 0 and n > 0 then return 0 end
local f = redis.call('HGETALL', KEYS[1])
for i = 1, #f, 2 do
  local node, member = string.match(f[i], '^([^\n]*)\n(.*)$')
  if member == ARGV[2] and node ~= ARGV[1] and tonumber(f[i + 1]) > 0 then
    if alive(node) then return 0 end
    redis.call('HDEL', KEYS[1], f[i])
  end
end
return 1
