-- A data pool's change (PUT, POST or DELETE), whole, in one script: read the document, check
-- it, publish the event exactly as publish.lua does (its text is composed before this part, as
-- the function `publish`), and store the new document with the event's number. Nothing runs
-- in between, so no lock is needed, and a caller that goes away (a dropped request, a node
-- that dies) has either changed the pool completely or not at all.
--
-- KEYS[1] the document (a hash: doc, seq), under the topic stream's hash tag; on one Redis
--   KEYS[2] the set of pools (on a Redis Cluster it is in another slot); then publish.lua's
--   keys (meta, history).
-- ARGV: 1 'put', 'append' or 'delete', 2 the value (JSON text), 3 the payload up to the
--   contents of the `add` event, 4 that of the other event (`update`, `append` or `delete`),
--   5 largest document (bytes), 6 most pools, 7 '1' once the caller moved any document from
--   the old key name (see pool_adopt.lua), 8 the pools the caller counted ('' when KEYS[2]
--   is the set), 9 the pool's name; then publish.lua's arguments, from its (empty) payload.
-- Returns 'e:not_found', 'e:not_array', 'e:too_large' or 'e:full' (nothing changed); '?' for
-- a missing document while ARGV[7] is not '1' (nothing changed: the caller moves any document
-- from the old key name, counts the pools on a Redis Cluster, and calls again); else the
-- event and publish.lua's answer, 'add:gen:seq:sockets:retained'.
local own = #KEYS - 2
local doc_key = KEYS[1]
local set_key = nil
if own > 1 then set_key = KEYS[2] end
local op, value = ARGV[1], ARGV[2]
local old = redis.call('HGET', doc_key, 'doc')
if (not old) and ARGV[7] ~= '1' then return '?' end

-- s without its trailing JSON whitespace.
local function trim_end(s)
  local n = #s
  while n > 0 do
    local b = string.byte(s, n)
    if b == 32 or b == 9 or b == 10 or b == 13 then n = n - 1 else break end
  end
  return string.sub(s, 1, n)
end

local event, doc, contents
if op == 'put' then
  event, doc, contents = 'update', value, value
  if not old then event = 'add' end
elseif op == 'append' then
  if not old then
    doc = '[' .. value .. ']'
    event, contents = 'add', doc
  else
    -- Text, not cjson: the document keeps the client's bytes (cjson would re-encode numbers
    -- and reorder keys). A stored document is valid JSON, so one that opens with '[' is an
    -- array whose last character is its closing ']'; what stands before that is '[' only
    -- when the array is empty. pools.rs's `append_to` does the same for one node.
    if not string.find(old, '^%s*%[') then return 'e:not_array' end
    local body = trim_end(old)
    local before = trim_end(string.sub(body, 1, -2))
    if string.sub(before, -1) == '[' then
      doc = before .. value .. ']'
    else
      doc = before .. ',' .. value .. ']'
    end
    event, contents = 'append', value
  end
else
  if not old then return 'e:not_found' end
  event, contents = 'delete', 'null'
end

if doc then
  if #doc > tonumber(ARGV[5]) then return 'e:too_large' end
  if not old then
    local count
    if set_key then count = redis.call('SCARD', set_key) else count = tonumber(ARGV[8]) or 0 end
    if count >= tonumber(ARGV[6]) then return 'e:full' end
  end
end

local head = ARGV[4]
if event == 'add' then head = ARGV[3] end
local args = { head .. contents }
for i = 11, #ARGV do args[#args + 1] = ARGV[i] end
local reply = publish({ KEYS[own + 1], KEYS[own + 2] }, args)
local seq = string.match(reply, '^[^:]*:(%d+):') or '0'
if doc then
  redis.call('HSET', doc_key, 'doc', doc, 'seq', seq)
  if set_key then redis.call('SADD', set_key, ARGV[9]) end
else
  redis.call('DEL', doc_key)
  if set_key then redis.call('SREM', set_key, ARGV[9]) end
end
return event .. ':' .. reply
