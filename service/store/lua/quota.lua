-- quota: settle finished requests of one token, then (optionally) admit a new one, atomically
-- against the token's limits and budget and its team's.  Settlements ride along with the next
-- admission of the same token (or travel alone after a short delay), so a limited request
-- costs one script call.
--
-- KEYS[1] token windows (hash)   KEYS[2] token leases (zset: entry id -> lease expiry, ms)
-- KEYS[3] token budget (hash)
-- KEYS[4] team windows (hash)    KEYS[5] team leases (zset)   KEYS[6] team budget (hash)
--                                                        (KEYS[4..6] only for a team's token)
-- Windows hash fields: "o" oldest live second; "rs"/"ts" requests/tokens in the window;
-- "r<second>"/"t<second>" per-second buckets.  At most 61 buckets of each: memory per owner is
-- bounded whatever its limits.  A bucket is dropped once it is certainly older than 60 s, so
-- a count may include requests up to 1 s older than the window: it refuses a little early,
-- never admits more than the limit.
-- Budget hash fields (micro-USD; durable, no expiry): "k" period kind (0 total, 1 UTC day,
-- 2 ISO week, 3 UTC month), "p" start of the period (ms) that "s" belongs to, "s" settled
-- spend of that period, "r" reserved by requests in flight, "e<entry>" each one's reservation.
-- A reservation is held until its request settles; if its lease expires first (the replica
-- died), the reservation is charged in full: spend is never under-counted.
--
-- ARGV[1] S, the number of settlements, then S times:
--   entry id, admission second, reserved tokens, real tokens (-1: keep the reservation),
--   real cost in micro-USD (-1: charge the budget reservation in full; -2: no budget was
--   reserved, so no budget is read)
-- then, when admitting (ARGV has more):
--   entry id, tokens to reserve, lease ms, worst-case cost (micro-USD),
--   token rpm, tpm, max_concurrency, team rpm, tpm, max_concurrency   (0 = no limit),
--   token budget (micro-USD, -1 none), its period kind, team budget, its period kind
-- A settlement applies only if its lease (or, for budgets, its reservation) is still held:
-- it is idempotent; a lease that expired keeps its reservation, which errs on the safe side.
-- Returns {status, retry_ms, now_ms, limiting side (0 token, 1 team), rpm remaining,
--          tpm remaining, budget remaining (micro-USD)} with remaining -1 when unlimited.
-- status: 0 admitted (or only settled), 1 over rpm, 2 over tpm, 3 over max_concurrency,
-- 4 over budget (retry_ms: until the period ends; 0 when it never does).
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = math.floor(now / 1000)
local in_team = #KEYS == 6
local DAY = 86400000

-- Calendar arithmetic (days since 1970-01-01 <-> year, month), as store/periods.py.
local function days_from_civil(y, m)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5)
  return era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
end
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end
-- Start and end (ms) of the period of `kind` holding now; "total" is 0, -1 (no end).
local function period(kind)
  if kind == 0 then return 0, -1 end
  local day = math.floor(now / DAY)
  if kind == 1 then return day * DAY, (day + 1) * DAY end
  if kind == 2 then
    local monday = day - (day + 3) % 7 -- 1970-01-01 was a Thursday
    return monday * DAY, (monday + 7) * DAY
  end
  local y, m = civil_from_days(day)
  local ny, nm = y, m + 1
  if nm > 12 then ny, nm = y + 1, 1 end
  return days_from_civil(y, m) * DAY, days_from_civil(ny, nm) * DAY
end

-- Bring budget `b` to the current period of `kind` (nil: its stored kind).  A new period, or
-- a new kind, starts from zero spend; reservations in flight stay held.
local function roll(b, kind)
  local v = redis.call("HMGET", b, "k", "p")
  local stored = tonumber(v[1])
  kind = kind or stored
  if kind == nil then return end
  local start = period(kind)
  if stored ~= kind or tonumber(v[2]) ~= start then
    redis.call("HSET", b, "k", kind, "p", start, "s", 0)
  end
end

-- Settle entry `e`'s reservation on budget `b` with `cost` (-1: the reservation in full).
local function charge(b, e, cost)
  local held = redis.call("HGET", b, "e" .. e)
  if not held then return end
  held = tonumber(held)
  roll(b, nil)
  redis.call("HDEL", b, "e" .. e)
  redis.call("HINCRBY", b, "r", -held)
  redis.call("HINCRBY", b, "s", cost >= 0 and cost or held)
end

-- Drop the expired leases of `l`; their budget reservations on `b` are charged in full.
local function expire(l, b)
  local gone = redis.call("ZRANGEBYSCORE", l, "-inf", now)
  if #gone == 0 then return end
  for _, e in ipairs(gone) do charge(b, e, -1) end
  redis.call("ZREMRANGEBYSCORE", l, "-inf", now)
end

-- 1. settlements
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local base = 2 + i * 5
  local entry = ARGV[base]
  local cost = tonumber(ARGV[base + 4])
  if redis.call("ZREM", KEYS[2], entry) == 1 then
    local real = tonumber(ARGV[base + 3])
    if real >= 0 then
      local delta = real - tonumber(ARGV[base + 2])
      local field = "t" .. ARGV[base + 1]
      if delta ~= 0 then
        if redis.call("HEXISTS", KEYS[1], field) == 1 then
          redis.call("HINCRBY", KEYS[1], field, delta)
          redis.call("HINCRBY", KEYS[1], "ts", delta)
        end
        if in_team and redis.call("HEXISTS", KEYS[4], field) == 1 then
          redis.call("HINCRBY", KEYS[4], field, delta)
          redis.call("HINCRBY", KEYS[4], "ts", delta)
        end
      end
    end
  end
  -- Budgets: each side's reservation is its own proof (one charge per entry and side).
  if cost ~= -2 then charge(KEYS[3], entry, cost) end
  if in_team then
    redis.call("ZREM", KEYS[5], entry)
    if cost ~= -2 then charge(KEYS[6], entry, cost) end
  end
end
local a = 2 + n * 5
if #ARGV < a then return {0, 0, now, 0, -1, -1, -1} end

local entry = ARGV[a]
local cost = tonumber(ARGV[a + 1])
local lease_ms = tonumber(ARGV[a + 2])
local reserve = tonumber(ARGV[a + 3])

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

-- Check one side (token or team); returns status, retry, rpm remaining, tpm remaining,
-- budget remaining.
local function check(w, l, b, rpm, tpm, conc, budget, kind)
  local left = -1
  if budget >= 0 then
    expire(l, b)
    roll(b, kind)
    local v = redis.call("HMGET", b, "s", "r")
    local spent, held = tonumber(v[1]) or 0, tonumber(v[2]) or 0
    left = budget - spent - held
    if reserve > left then
      -- Room comes back when requests in flight settle, or else when the period ends.
      local retry = 1000
      if budget - spent < reserve then
        local _, stop = period(kind)
        retry = stop < 0 and 0 or stop - now
      end
      return 4, retry, -1, -1, math.max(0, left)
    end
    left = left - reserve
  end
  if rpm > 0 or tpm > 0 then
    local rs, ts = prune(w)
    if rpm > 0 and rs + 1 > rpm then return 1, wait_for(w, "r", rs, 1, rpm), 0, -1, left end
    if tpm > 0 and ts + cost > tpm then
      return 2, wait_for(w, "t", ts, cost, tpm), -1, math.max(0, tpm - ts), left
    end
    if conc > 0 then
      if budget < 0 then redis.call("ZREMRANGEBYSCORE", l, "-inf", now) end
      if redis.call("ZCARD", l) >= conc then return 3, 1000, -1, -1, left end
    end
    return 0, 0, rpm > 0 and rpm - rs - 1 or -1, tpm > 0 and tpm - ts - cost or -1, left
  end
  if conc > 0 then
    if budget < 0 then redis.call("ZREMRANGEBYSCORE", l, "-inf", now) end
    if redis.call("ZCARD", l) >= conc then return 3, 1000, -1, -1, left end
  end
  return 0, 0, -1, -1, left
end

local limits = {}
for i = 0, 5 do limits[i + 1] = tonumber(ARGV[a + 4 + i]) end
local budgets = {}
for i = 0, 3 do budgets[i + 1] = tonumber(ARGV[a + 10 + i]) end
local function limited(first, budget) -- does this side have anything to check?
  return limits[first] > 0 or limits[first + 1] > 0 or limits[first + 2] > 0 or budget >= 0
end

local rpm_left, tpm_left, budget_left = -1, -1, -1
if limited(1, budgets[1]) then
  local status, retry
  status, retry, rpm_left, tpm_left, budget_left = check(
    KEYS[1], KEYS[2], KEYS[3], limits[1], limits[2], limits[3], budgets[1], budgets[2])
  if status ~= 0 then return {status, retry, now, 0, rpm_left, tpm_left, budget_left} end
end
local team_budget = in_team and budgets[3] or -1
if in_team and limited(4, team_budget) then
  local status, retry, rl, tl, bl = check(
    KEYS[4], KEYS[5], KEYS[6], limits[4], limits[5], limits[6], team_budget, budgets[4])
  if status ~= 0 then return {status, retry, now, 1, rl, tl, bl} end
  -- The tighter side is what the client sees in its headers.
  if rl >= 0 and (rpm_left < 0 or rl < rpm_left) then rpm_left = rl end
  if tl >= 0 and (tpm_left < 0 or tl < tpm_left) then tpm_left = tl end
  if bl >= 0 and (budget_left < 0 or bl < budget_left) then budget_left = bl end
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
-- A lease that guards a budget reservation must outlive any gap in renewals: its key does
-- not expire (it empties as requests settle, and expired entries are charged, not lost).
local function lease(l, durable)
  redis.call("ZADD", l, now + lease_ms, entry)
  if durable then
    redis.call("PERSIST", l)
  else
    -- Every lease runs lease_ms from its admission or renewal, so the newest is the longest.
    redis.call("PEXPIRE", l, lease_ms + 1000)
  end
end
local function hold(b)
  redis.call("HSET", b, "e" .. entry, reserve)
  redis.call("HINCRBY", b, "r", reserve)
end
if limits[1] > 0 or limits[2] > 0 then record(KEYS[1]) end
-- The token's lease is the proof of admission that settlement looks for.
if lease_ms > 0 then lease(KEYS[2], budgets[1] >= 0) end
if budgets[1] >= 0 then hold(KEYS[3]) end
if in_team then
  if limits[4] > 0 or limits[5] > 0 then record(KEYS[4]) end
  if lease_ms > 0 and (limits[6] > 0 or team_budget >= 0) then
    lease(KEYS[5], team_budget >= 0)
  end
  if team_budget >= 0 then hold(KEYS[6]) end
end
return {0, 0, now, 0, rpm_left, tpm_left, budget_left}
