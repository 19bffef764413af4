-- put_record: write a token's or a team's record in the registry and bump its version.
--
-- KEYS[1] the record (hash)   KEYS[2] the index of its kind (set of ids)
-- KEYS[3] the registry version (integer; its absence means the store lost the registry; it
--         starts from the clock, so a version is never seen twice across such a loss)
-- ARGV[1] mode: "create" (only if absent), "update" (merge into an existing record) or
--         "newest" (replace unless the stored "updated_ms" is newer; used to re-seed)
-- ARGV[2] the record id, then field, value, field, value, ...
-- Returns 1 when written, 0 when the mode said no.
local mode = ARGV[1]
local exists = redis.call("EXISTS", KEYS[1]) == 1
if mode == "create" and exists then return 0 end
if mode == "update" and not exists then return 0 end
local fields = {}
local updated = 0
for i = 3, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  if ARGV[i] == "updated_ms" then updated = tonumber(ARGV[i + 1]) or 0 end
end
if mode == "newest" and exists then
  local stored = tonumber(redis.call("HGET", KEYS[1], "updated_ms") or "0") or 0
  if stored >= updated then return 0 end
  redis.call("DEL", KEYS[1])
end
if #fields > 0 then redis.call("HSET", KEYS[1], unpack(fields)) end
redis.call("SADD", KEYS[2], ARGV[2])
if redis.call("EXISTS", KEYS[3]) == 1 then
  redis.call("INCR", KEYS[3])
else
  -- A registry written again after it was lost (an empty restart) starts its version from the
  -- clock in microseconds, never from 1: a replica that last saw version N before the loss
  -- must not find N again after N re-seeded writes, and skip its own reconciliation.
  local t = redis.call("TIME")
  redis.call("SET", KEYS[3], string.format("%d", t[1] * 1000000 + t[2]))
end
return 1
