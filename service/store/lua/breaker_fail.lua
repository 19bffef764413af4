-- breaker_fail: record a failed attempt of a (provider, model) pair; open its breaker on
-- evidence.  Closed -> open after `threshold` consecutive failures (or at once when `trip`
-- says the fleet's error rate is over its limit); half-open (opened before, open period over,
-- no success since) -> open again at once, for twice as long.  An open breaker is left as is:
-- a failure of an attempt that started before it opened is no new evidence.
--
-- KEYS[1] cooldowns (hash: field -> open until, ms)   KEYS[2] consecutive failures (hash)
-- KEYS[3] breakers (hash: field -> openings in a row; present = not closed)
-- KEYS[4] probes (hash: field -> "owner|until ms" of the half-open probe in flight)
-- ARGV[1] field   ARGV[2] failure threshold   ARGV[3] trip: 1 opens a closed breaker now
-- ARGV[4] first open period ms   ARGV[5] longest open period ms
-- ARGV[6] upstream Retry-After ms, or -1 (lengthens an opening, never shortens it)
-- ARGV[7] Retry-After floor ms   ARGV[8] Retry-After ceiling ms
-- Returns {open until ms (0 while closed), now ms, 1 if this call opened it else 0}.
local field = ARGV[1]
local threshold = tonumber(ARGV[2])
local trip = ARGV[3] == "1"
local open_ms = tonumber(ARGV[4])
local max_open_ms = tonumber(ARGV[5])
local retry_after = tonumber(ARGV[6])

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local current = tonumber(redis.call("HGET", KEYS[1], field) or "0") or 0
if current > now then
  return {current, now, 0}
end
local openings = tonumber(redis.call("HGET", KEYS[3], field) or "0") or 0
local failures = 0
if trip then
  if openings > 0 then
    -- Half-open: the rate evidence predates the opening; the probe decides.
    return {0, now, 0}
  end
else
  failures = redis.call("HINCRBY", KEYS[2], field, 1)
  redis.call("PEXPIRE", KEYS[2], max_open_ms * 2)
  if openings == 0 and failures < threshold then
    return {0, now, 0}
  end
end

local duration = math.min(open_ms * 2 ^ openings, max_open_ms)
if retry_after >= 0 then
  duration = math.max(duration, math.min(math.max(retry_after, tonumber(ARGV[7])), tonumber(ARGV[8])))
end
local until_ms = now + duration
redis.call("HSET", KEYS[1], field, until_ms)
redis.call("HSET", KEYS[3], field, openings + 1)
redis.call("HDEL", KEYS[4], field)

-- Drop cooldowns that are over; each hash lives as long as what it still holds needs.
local all = redis.call("HGETALL", KEYS[1])
local longest = until_ms
for i = 1, #all, 2 do
  local value = tonumber(all[i + 1]) or 0
  if value <= now then
    redis.call("HDEL", KEYS[1], all[i])
  elseif value > longest then
    longest = value
  end
end
redis.call("PEXPIRE", KEYS[1], longest - now + 1000)
-- A breaker nobody probes (no traffic) closes by itself long after its open period.
local keep = longest - now + max_open_ms * 2
if redis.call("PTTL", KEYS[3]) < keep then
  redis.call("PEXPIRE", KEYS[3], keep)
end
return {until_ms, now, 1}
