-- Pusher mode: every member's total over live nodes, deleting dead nodes' entries.
-- KEYS[1] a hash of '<node>\n<member>' -> count. ARGV[1] the liveness key prefix ('' on a
-- Redis Cluster: then ARGV[2..] are the ids of nodes known gone).
-- Returns member1, total1, member2, total2, ... (members with a total above zero).
local gone = {}
for i = 2, #ARGV do gone[ARGV[i]] = true end
local f = redis.call('HGETALL', KEYS[1])
local alive, sums, order = {}, {}, {}
for i = 1, #f, 2 do
  local node, member = string.match(f[i], '^([^\n]*)\n(.*)$')
  if node then
    if alive[node] == nil then
      if ARGV[1] ~= '' then
        alive[node] = redis.call('EXISTS', ARGV[1] .. node) == 1
      else
        alive[node] = not gone[node]
      end
    end
    if alive[node] then
      if sums[member] == nil then sums[member] = 0; table.insert(order, member) end
      sums[member] = sums[member] + tonumber(f[i + 1])
    else
      redis.call('HDEL', KEYS[1], f[i])
    end
  end
end
local out = {}
for _, m in ipairs(order) do
  if sums[m] > 0 then table.insert(out, m); table.insert(out, tostring(sums[m])) end
end
return out
