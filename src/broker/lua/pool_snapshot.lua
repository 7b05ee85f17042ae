-- A data pool's document and where its topic stream stands, read together (one slot, one
-- script): every change stores the document in the same script that numbers its event, so the
-- document holds exactly the changes numbered up to the position returned.
--
-- KEYS[1] the document (a hash: doc, seq), KEYS[2] the topic stream's meta hash.
-- Returns nil without a document, else {doc, generation ('' without a stream), number}.
local doc = redis.call('HGET', KEYS[1], 'doc')
if not doc then return false end
local m = redis.call('HMGET', KEYS[2], 'e', 's')
return { doc, m[1] or '', tonumber(m[2]) or 0 }
