-- breaker_release: give back a probe claim whose attempt ended without a verdict (a hedge
-- that lost, a client that left), so the next request may probe at once.
--
-- KEYS[1] probes (hash: field -> "owner|until ms")
-- ARGV[1] field   ARGV[2] owner
-- Returns 1 when the claim was the owner's and is released, else 0.
local held = redis.call("HGET", KEYS[1], ARGV[1])
if held and string.sub(held, 1, #ARGV[2] + 1) == ARGV[2] .. "|" then
  redis.call("HDEL", KEYS[1], ARGV[1])
  return 1
end
return 0
