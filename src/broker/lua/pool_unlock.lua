-- Releases a data pool's change lock only if it is still the caller's.
-- KEYS[1] the lock. ARGV[1] the caller's token. Returns 1 if released, 0 if not (expired, or
-- taken by another change since).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
