-- breaker_state: the fleet's cooldowns in force, the fields with recent failures and the pair
-- breakers not closed, with the store's clock, in one read (each replica polls it every
-- second).
--
-- KEYS[1] cooldowns (hash: field -> cooling or open until, ms)   KEYS[2] consecutive
-- failures (hash)   KEYS[3] breakers (hash: field -> openings in a row; see breaker_fail.lua)
-- Returns {now_ms, n, f, field_1, until_1, ..., field_n, until_n, failing_1 .. failing_f,
-- tripped_field, ...}.
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local result = {now, 0, 0}
local cooldowns = redis.call("HGETALL", KEYS[1])
for i = 1, #cooldowns, 2 do
  local until_ms = tonumber(cooldowns[i + 1]) or 0
  if until_ms > now then
    result[#result + 1] = cooldowns[i]
    result[#result + 1] = until_ms
    result[2] = result[2] + 1
  end
end
local failing = redis.call("HKEYS", KEYS[2])
for i = 1, #failing do result[#result + 1] = failing[i] end
result[3] = #failing
local tripped = redis.call("HKEYS", KEYS[3])
for i = 1, #tripped do result[#result + 1] = tripped[i] end
return result
