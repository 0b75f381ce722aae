-- ssebridge: publish one event with an id. Append it to the channel's history (a Redis Stream) and
-- announce it live, atomically, so a bridge never sees a live event that history lacks or the
-- other way round. Load it with SCRIPT LOAD and call it with EVALSHA (or EVAL), from any language.
--
-- KEYS[1]  the history stream:  "ssebridge:{" .. CHANNEL .. "}:h"
-- ARGV[1]  the live channel:    "ssebridge:{" .. CHANNEL .. "}:e"  (same hash tag: same cluster slot)
-- ARGV[2]  data (any bytes; an SSE client wants UTF-8)
-- ARGV[3]  event name, or "" (no CR, LF or NUL: the caller validates)
-- ARGV[4]  retry in ms, digits only, or ""
-- ARGV[5]  MAXLEN: keep about this many events (approximate trim), "0" for no count limit
-- ARGV[6]  max age in ms: drop events older than this (exact MINID trim), "0" for no age limit
-- ARGV[7]  ttl in ms: the whole history expires this long after the last publish, "0" for never
-- ARGV[8]  "PUBLISH", or "SPUBLISH" on a Redis Cluster (sharded pub/sub)
--
-- Returns the new event's id ("MS-SEQ", the stream id), which is the SSE id clients see.
--
-- The live message (the envelope) is six fields joined by LF; only the last may hold LF:
--   "ssebridge1" LF id LF previous-id LF event LF retry LF data
-- previous-id is the id of the event before this one in history ("" when history was empty): a
-- bridge whose last delivered id differs knows it missed events and reads them from history.

local key, live = KEYS[1], ARGV[1]
local data, event, retry = ARGV[2], ARGV[3], ARGV[4]
local maxlen, maxage, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local command = ARGV[8]
if command ~= "PUBLISH" and command ~= "SPUBLISH" then
  return redis.error_reply("ssebridge: ARGV[8] must be PUBLISH or SPUBLISH")
end

if string.find(event, "[\r\n%z]") then
  return redis.error_reply("ssebridge: an event name cannot hold CR, LF or NUL")
end
if not string.find(retry, "^%d*$") then
  return redis.error_reply("ssebridge: retry must be digits")
end

local previous = ""
local newest = redis.call("XREVRANGE", key, "+", "-", "COUNT", 1)
if newest[1] then
  previous = newest[1][1]
end

local add = {"XADD", key}
if maxlen and maxlen > 0 then
  table.insert(add, "MAXLEN")
  table.insert(add, "~")
  table.insert(add, maxlen)
end
table.insert(add, "*")
table.insert(add, "d")
table.insert(add, data)
if event ~= "" then
  table.insert(add, "e")
  table.insert(add, event)
end
if retry ~= "" then
  table.insert(add, "r")
  table.insert(add, retry)
end
local id = redis.call(unpack(add))

if maxage and maxage > 0 then
  local now = redis.call("TIME")
  local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - maxage
  if cutoff > 0 then
    redis.call("XTRIM", key, "MINID", cutoff)
  end
end
if ttl and ttl > 0 then
  redis.call("PEXPIRE", key, ttl)
end

redis.call(command, live, "ssebridge1\n" .. id .. "\n" .. previous .. "\n" .. event .. "\n" .. retry .. "\n" .. data)
return id
