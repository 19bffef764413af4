-- breaker_close: a success resets consecutive failure counts and closes breakers.
--
-- KEYS[1] cooldowns   KEYS[2] consecutive failures   KEYS[3] breakers   KEYS[4] probes
-- (see breaker_fail.lua)
-- ARGV[1..n] fields: pairs and providers that served a success.  A provider's cooldown
-- (its 429s, a bad key) is not a breaker: only its failure count goes.
-- Returns how many breakers this call closed.
local closed = 0
for i = 1, #ARGV do
  local field = ARGV[i]
  redis.call("HDEL", KEYS[2], field)
  if redis.call("HDEL", KEYS[3], field) == 1 then
    redis.call("HDEL", KEYS[1], field)
    redis.call("HDEL", KEYS[4], field)
    closed = closed + 1
  end
end
return closed
