-- breaker_probe: claim the one probe a half-open breaker allows, fleet-wide.
--
-- KEYS[1] cooldowns (hash: field -> open until, ms)   KEYS[2] breakers (hash, see
-- breaker_fail.lua)   KEYS[3] probes (hash: field -> "owner|until ms")
-- ARGV[1] field   ARGV[2] owner (the request's unique id)   ARGV[3] lease ms (how long the
-- claim holds if its owner never reports: its attempt's timeout)
-- Returns 1 when the caller may try the pair (it holds the probe, or the breaker closed
-- meanwhile), 0 when it may not (open again, or another probe is in flight).
local field = ARGV[1]
local owner = ARGV[2]
local lease = tonumber(ARGV[3])

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if redis.call("HEXISTS", KEYS[2], field) == 0 then
  return 1
end
local open_until = tonumber(redis.call("HGET", KEYS[1], field) or "0") or 0
if open_until > now then
  return 0
end
local held = redis.call("HGET", KEYS[3], field)
if held then
  local sep = string.find(held, "|", 1, true)
  local holder = string.sub(held, 1, sep - 1)
  local held_until = tonumber(string.sub(held, sep + 1)) or 0
  if held_until > now and holder ~= owner then
    return 0
  end
end
redis.call("HSET", KEYS[3], field, owner .. "|" .. (now + lease))
if redis.call("PTTL", KEYS[3]) < lease + 1000 then
  redis.call("PEXPIRE", KEYS[3], lease + 1000)
end
return 1
