-- settle: after a request, replace its tpm reservation by the real usage, release its
-- concurrency lease, and reset the failure count of what served it.
--
-- KEYS[1] tpm window (zset)   KEYS[2] tpm amounts (hash)   KEYS[3] tpm sum (string)
-- KEYS[4] concurrency leases (zset)   KEYS[5] consecutive failures (hash)
-- ARGV[1] request id   ARGV[2] real tokens used, or -1 to keep the reservation
-- ARGV[3..] failure-count fields to reset (the provider and pair that succeeded)
-- Returns the tpm adjustment applied (tokens; 0 when the reservation already left the window).
local request_id = ARGV[1]
local actual = tonumber(ARGV[2])
local delta = 0
if actual >= 0 and redis.call("ZSCORE", KEYS[1], request_id) then
  local reserved = tonumber(redis.call("HGET", KEYS[2], request_id) or "0") or 0
  delta = actual - reserved
  if delta ~= 0 then
    redis.call("HSET", KEYS[2], request_id, actual)
    redis.call("INCRBY", KEYS[3], delta)
  end
end
redis.call("ZREM", KEYS[4], request_id)
if #ARGV >= 3 then
  redis.call("HDEL", KEYS[5], unpack(ARGV, 3))
end
return delta
