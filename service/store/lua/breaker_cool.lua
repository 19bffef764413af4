-- breaker_cool: put a provider or a (provider, model) pair in cooldown after a failure.
-- A new failure can extend a cooldown, never shorten it.
--
-- KEYS[1] cooldowns (hash: field -> cooling until, ms)   KEYS[2] consecutive failures (hash)
-- ARGV[1] field   ARGV[2] upstream Retry-After in ms, or -1   ARGV[3] fixed duration ms, or -1
-- ARGV[4] base ms (doubles per consecutive failure)   ARGV[5] cap ms
-- ARGV[6] Retry-After floor ms   ARGV[7] Retry-After ceiling ms
-- Returns {cooling until ms, now ms}.
local field = ARGV[1]
local retry_after = tonumber(ARGV[2])
local fixed = tonumber(ARGV[3])
local base = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local failures = redis.call("HINCRBY", KEYS[2], field, 1)
redis.call("PEXPIRE", KEYS[2], cap * 2)

local duration
if retry_after >= 0 then
  duration = math.min(math.max(retry_after, tonumber(ARGV[6])), tonumber(ARGV[7]))
elseif fixed >= 0 then
  duration = fixed
else
  duration = math.min(base * 2 ^ (failures - 1), cap)
end

local until_ms = now + duration
local current = tonumber(redis.call("HGET", KEYS[1], field) or "0") or 0
if current > until_ms then
  until_ms = current
else
  redis.call("HSET", KEYS[1], field, until_ms)
end

-- Drop fields whose cooldown is over; the hash lives as long as its longest cooldown.
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
return {until_ms, now}
