-- What a resuming socket missed, for a batch of streams. Read only.
--
-- KEYS: meta1, hist1, meta2, hist2, ...
-- ARGV: 1 history ttl ms, then per stream: the 'gen:seq' it last saw ('' if unparsable),
--       and the number to read up to (where the socket's live frames start)
-- Returns per stream {gen, top, oldest kept, seq1, payload1, seq2, payload2, ...}: the kept
-- entries after the socket's number (all of them if another generation), up to the limit.
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 2 do
  local meta, hist = KEYS[2 * i - 1], KEYS[2 * i]
  local since, upto = ARGV[2 * i], tonumber(ARGV[2 * i + 1])
  local m = redis.call('HMGET', meta, 'e', 's')
  local gen, top = m[1] or '', tonumber(m[2]) or 0
  local from = 0
  local sg, ss = string.match(since, '^(%x+):(%d+)$')
  if sg and sg == gen then from = math.min(tonumber(ss), top) end
  -- The oldest entry not yet expired (expired ones are a prefix: time order).
  local oldest = top + 1
  local start = '-'
  while true do
    local head = redis.call('XRANGE', hist, start, '+', 'COUNT', 16)
    local found = false
    for _, e in ipairs(head) do
      if tonumber(e[2][2]) >= cutoff then
        oldest = tonumber(string.match(e[1], '^(%d+)'))
        found = true
        break
      end
      start = '(' .. e[1]
    end
    if found or #head < 16 then break end
  end
  local res = {gen, top, oldest}
  local first = math.max(from + 1, oldest)
  if first <= upto then
    for _, e in ipairs(redis.call('XRANGE', hist, first .. '-0', upto .. '-0')) do
      res[#res + 1] = tonumber(string.match(e[1], '^(%d+)'))
      res[#res + 1] = e[2][4]
    end
  end
  out[i] = res
end
return out
