-- quota: settle finished requests of one token, then (optionally) admit a new one, atomically
-- against the token's limits and its team's.  Settlements ride along with the next admission
-- of the same token (or travel alone after a short delay), so a limited request costs one
-- script call.
--
-- KEYS[1] token windows (hash)   KEYS[2] token leases (zset: entry id -> lease expiry, ms)
-- KEYS[3] team windows (hash)    KEYS[4] team leases (zset)        (KEYS[3..4] only in a team)
-- Windows hash fields: "o" oldest live second; "rs"/"ts" requests/tokens in the window;
-- "r<second>"/"t<second>" per-second buckets.  At most 61 buckets of each: memory per owner is
-- bounded whatever its limits.  A bucket is dropped once it is certainly older than 60 s, so
-- a count may include requests up to 1 s older than the window: it refuses a little early,
-- never admits more than the limit.
--
-- ARGV[1] S, the number of settlements, then S times:
--   entry id, admission second, reserved tokens, real tokens (-1: keep the reservation)
-- then, when admitting (ARGV has more):
--   entry id, tokens to reserve, lease ms,
--   token rpm, tpm, max_concurrency, team rpm, tpm, max_concurrency   (0 = no limit)
-- A settlement applies only if its lease is still held (idempotent; a lease that expired
-- keeps its reservation, which errs on the safe side).
-- Returns {status, retry_ms, now_ms, limiting side (0 token, 1 team), rpm remaining,
--          tpm remaining} with remaining -1 when unlimited.
-- status: 0 admitted (or only settled), 1 over rpm, 2 over tpm, 3 over max_concurrency.
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = math.floor(now / 1000)
local in_team = #KEYS == 4

-- 1. settlements
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local base = 2 + i * 4
  local entry = ARGV[base]
  if redis.call("ZREM", KEYS[2], entry) == 1 then
    if in_team then redis.call("ZREM", KEYS[4], entry) end
    local real = tonumber(ARGV[base + 3])
    if real >= 0 then
      local delta = real - tonumber(ARGV[base + 2])
      local field = "t" .. ARGV[base + 1]
      if delta ~= 0 then
        if redis.call("HEXISTS", KEYS[1], field) == 1 then
          redis.call("HINCRBY", KEYS[1], field, delta)
          redis.call("HINCRBY", KEYS[1], "ts", delta)
        end
        if in_team and redis.call("HEXISTS", KEYS[3], field) == 1 then
          redis.call("HINCRBY", KEYS[3], field, delta)
          redis.call("HINCRBY", KEYS[3], "ts", delta)
        end
      end
    end
  end
end
local a = 2 + n * 4
if #ARGV < a then return {0, 0, now, 0, -1, -1} end

local entry = ARGV[a]
local cost = tonumber(ARGV[a + 1])
local lease_ms = tonumber(ARGV[a + 2])

-- Drop the buckets that left the window; returns rs, ts.
local fresh = {}  -- windows that have no "o" yet (record sets it)
local function prune(w)
  local v = redis.call("HMGET", w, "o", "rs", "ts")
  local limit = now_s - 60
  if not v[1] then fresh[w] = true end
  local oldest = tonumber(v[1]) or limit
  local rs, ts = tonumber(v[2]) or 0, tonumber(v[3]) or 0
  if oldest < limit then
    -- The key expires 61 s after its last write, so at most 62 seconds are ever stale.
    local fields = {}
    for s = oldest, limit - 1 do
      fields[#fields + 1] = "r" .. s
      fields[#fields + 1] = "t" .. s
    end
    local values = redis.call("HMGET", w, unpack(fields))
    local freed_r, freed_t = 0, 0
    for i = 1, #values, 2 do
      freed_r = freed_r + (tonumber(values[i]) or 0)
      freed_t = freed_t + (tonumber(values[i + 1]) or 0)
    end
    redis.call("HDEL", w, unpack(fields))
    rs, ts = rs - freed_r, ts - freed_t
    redis.call("HSET", w, "o", limit, "rs", rs, "ts", ts)
  end
  return rs, ts
end

-- Milliseconds until enough of the window leaves that `need` more fits under `limit`.
local function wait_for(w, prefix, used, need, limit)
  if need > limit then return 60000 end
  local freed = 0
  for s = now_s - 60, now_s do
    freed = freed + (tonumber(redis.call("HGET", w, prefix .. s)) or 0)
    if used - freed + need <= limit then return math.max(1, (s + 61) * 1000 - now) end
  end
  return 60000
end

-- Check one side (token or team); returns status, retry, rpm remaining, tpm remaining.
local function check(w, l, rpm, tpm, conc)
  local rs, ts = prune(w)
  if rpm > 0 and rs + 1 > rpm then return 1, wait_for(w, "r", rs, 1, rpm), 0, -1 end
  if tpm > 0 and ts + cost > tpm then
    return 2, wait_for(w, "t", ts, cost, tpm), -1, math.max(0, tpm - ts)
  end
  if conc > 0 then
    redis.call("ZREMRANGEBYSCORE", l, "-inf", now)
    if redis.call("ZCARD", l) >= conc then return 3, 1000, -1, -1 end
  end
  return 0, 0, rpm > 0 and rpm - rs - 1 or -1, tpm > 0 and tpm - ts - cost or -1
end

local limits = {}
for i = 0, 5 do limits[i + 1] = tonumber(ARGV[a + 3 + i]) end
local rpm_left, tpm_left = -1, -1
if limits[1] > 0 or limits[2] > 0 or limits[3] > 0 then
  local status, retry
  status, retry, rpm_left, tpm_left = check(KEYS[1], KEYS[2], limits[1], limits[2], limits[3])
  if status ~= 0 then return {status, retry, now, 0, rpm_left, tpm_left} end
end
if in_team and (limits[4] > 0 or limits[5] > 0 or limits[6] > 0) then
  local status, retry, rl, tl = check(KEYS[3], KEYS[4], limits[4], limits[5], limits[6])
  if status ~= 0 then return {status, retry, now, 1, rl, tl} end
  -- The tighter side is what the client sees in its headers.
  if rl >= 0 and (rpm_left < 0 or rl < rpm_left) then rpm_left = rl end
  if tl >= 0 and (tpm_left < 0 or tl < tpm_left) then tpm_left = tl end
end

-- Every check passed: record the admission on each side that has limits.
local function record(w)
  if fresh[w] then redis.call("HSET", w, "o", now_s - 60) end
  redis.call("HINCRBY", w, "r" .. now_s, 1)
  redis.call("HINCRBY", w, "rs", 1)
  if cost > 0 then
    redis.call("HINCRBY", w, "t" .. now_s, cost)
    redis.call("HINCRBY", w, "ts", cost)
  end
  redis.call("PEXPIRE", w, 61000)
end
local function lease(l)
  redis.call("ZADD", l, now + lease_ms, entry)
  -- Every lease runs lease_ms from its admission or renewal, so the newest is the longest.
  redis.call("PEXPIRE", l, lease_ms + 1000)
end
if limits[1] > 0 or limits[2] > 0 then record(KEYS[1]) end
-- The token's lease is the proof of admission that settlement looks for.
if lease_ms > 0 then lease(KEYS[2]) end
if in_team then
  if limits[4] > 0 or limits[5] > 0 then record(KEYS[3]) end
  if lease_ms > 0 and limits[6] > 0 then lease(KEYS[4]) end
end
return {0, 0, now, 0, rpm_left, tpm_left}
