-- Moves a data pool's document from the key it had before it moved under its topic stream's
-- hash tag (`<prefix>:pool:{<name>}`) to its key now, unless that one exists (then a change
-- made since wins and the old one is only dropped).
--
-- KEYS[1] the key now. One Redis: KEYS[2] the old key, read and deleted here, so the move is
-- atomic. A Redis Cluster (the old key is in another slot): ARGV[1] and ARGV[2] the old doc and
-- seq, read by the caller, who deletes the old key after this.
-- Returns 1 if a document was moved, else 0.
local doc, seq = ARGV[1], ARGV[2]
if KEYS[2] then
  local o = redis.call('HMGET', KEYS[2], 'doc', 'seq')
  doc, seq = o[1], o[2]
  redis.call('DEL', KEYS[2])
end
if not doc then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'doc', doc, 'seq', seq or 0)
return 1
