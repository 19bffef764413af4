-- admit: the one store round trip before an upstream call.
-- Authenticates a token, applies its rpm / tpm / max_concurrency limits atomically, and reads
-- the cooldowns of the request's candidates.  Nothing is written unless every check passes.
--
-- KEYS[1] token record (hash)      KEYS[2] rpm window (zset: member request id, score ms)
-- KEYS[3] tpm window (zset)        KEYS[4] tpm amounts (hash: request id -> tokens)
-- KEYS[5] tpm sum (string)         KEYS[6] concurrency leases (zset: score = lease expiry ms)
-- KEYS[7] cooldowns (hash: field -> cooling until, ms since epoch)
-- KEYS[8] consecutive failures (hash: field -> count)
-- ARGV[1] request id   ARGV[2] tpm cost (tokens)   ARGV[3] lease ms
-- ARGV[4] "1" to check the token, "0" when auth is off
-- ARGV[5] "1" when quotas must refuse (store failover in closed mode), else "0"
-- Returns {status, retry_after_ms, rpm_limit, rpm_remaining, rpm_reset_ms,
--          tpm_limit, tpm_remaining, tpm_reset_ms, concurrency_limit, now_ms,
--          n, field_1, until_1, ..., field_n, until_n, failing_field, ...}
-- with the n cooldowns in force, then every field with recent failures (a success must reset
-- them).  Both hashes hold only what failed lately, so this stays small whatever the number
-- of candidates.
-- status: 0 admitted, 1 unknown token, 2 revoked, 3 expired, 4 rpm, 5 tpm,
--         6 concurrency, 7 quota store unavailable.  Limits are -1 when the token has none.
local request_id = ARGV[1]
local cost = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
local check_token = ARGV[4] == "1"
local refuse_quotas = ARGV[5] == "1"

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window_start = now - 60000

local result = {0, 0, -1, -1, 0, -1, -1, 0, -1, now}
local function finish(status, retry_ms)
  result[1] = status
  result[2] = retry_ms
  local cooldowns = redis.call("HGETALL", KEYS[7])
  local active = {}
  for i = 1, #cooldowns, 2 do
    if tonumber(cooldowns[i + 1]) > now then
      active[#active + 1] = cooldowns[i]
      active[#active + 1] = tonumber(cooldowns[i + 1])
    end
  end
  result[#result + 1] = #active / 2
  for i = 1, #active do result[#result + 1] = active[i] end
  local failing = redis.call("HKEYS", KEYS[8])
  for i = 1, #failing do result[#result + 1] = failing[i] end
  return result
end

if not check_token then return finish(0, 0) end

local rec = redis.call("HMGET", KEYS[1], "revoked", "expires_ms", "rpm", "tpm", "max_concurrency")
if not rec[1] then return finish(1, 0) end
if rec[1] == "1" then return finish(2, 0) end
local expires = tonumber(rec[2] or "0") or 0
if expires > 0 and expires <= now then return finish(3, 0) end
local rpm = tonumber(rec[3] or "0") or 0
local tpm = tonumber(rec[4] or "0") or 0
local max_conc = tonumber(rec[5] or "0") or 0
if rpm <= 0 and tpm <= 0 and max_conc <= 0 then return finish(0, 0) end
if refuse_quotas then return finish(7, 1000) end

-- rpm: a sliding log of admitted requests in the last 60 s.
local rpm_count = 0
if rpm > 0 then
  redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", window_start)
  rpm_count = redis.call("ZCARD", KEYS[2])
  result[3] = rpm
  result[4] = math.max(0, rpm - rpm_count)
  local oldest = redis.call("ZRANGE", KEYS[2], 0, 0, "WITHSCORES")
  result[5] = oldest[2] and (tonumber(oldest[2]) + 60000 - now) or 0
  if rpm_count >= rpm then return finish(4, result[5]) end
end

-- tpm: reservations in the last 60 s; expired ones leave the running sum.
local used = 0
if tpm > 0 then
  local expired = redis.call("ZRANGEBYSCORE", KEYS[3], "-inf", window_start)
  if #expired > 0 then
    -- In batches: unpack() of thousands of values overflows the Lua stack.
    local freed = 0
    for first = 1, #expired, 500 do
      local batch = {unpack(expired, first, math.min(first + 499, #expired))}
      local amounts = redis.call("HMGET", KEYS[4], unpack(batch))
      for i = 1, #amounts do freed = freed + (tonumber(amounts[i] or "0") or 0) end
      redis.call("HDEL", KEYS[4], unpack(batch))
    end
    redis.call("DECRBY", KEYS[5], freed)
    redis.call("ZREMRANGEBYSCORE", KEYS[3], "-inf", window_start)
  end
  used = tonumber(redis.call("GET", KEYS[5]) or "0")
  result[6] = tpm
  result[7] = math.max(0, tpm - used)
  if used + cost > tpm then
    -- Wait until enough reservations leave the window (or a full window if never).
    local retry = 60000
    if cost <= tpm then
      local entries = redis.call("ZRANGE", KEYS[3], 0, -1, "WITHSCORES")
      local freed = 0
      for i = 1, #entries, 2 do
        freed = freed + (tonumber(redis.call("HGET", KEYS[4], entries[i]) or "0") or 0)
        if used - freed + cost <= tpm then
          retry = tonumber(entries[i + 1]) + 60000 - now
          break
        end
      end
    end
    result[8] = retry
    return finish(5, retry)
  end
  local oldest = redis.call("ZRANGE", KEYS[3], 0, 0, "WITHSCORES")
  result[8] = oldest[2] and (tonumber(oldest[2]) + 60000 - now) or 60000
end

-- max_concurrency: leases that expire on their own if a replica dies holding them.
if max_conc > 0 then
  result[9] = max_conc
  redis.call("ZREMRANGEBYSCORE", KEYS[6], "-inf", now)
  if redis.call("ZCARD", KEYS[6]) >= max_conc then return finish(6, 1000) end
end

-- Every check passed: record the admission.
if rpm > 0 then
  redis.call("ZADD", KEYS[2], now, request_id)
  redis.call("PEXPIRE", KEYS[2], 61000)
  result[4] = rpm - rpm_count - 1
  if rpm_count == 0 then result[5] = 60000 end
end
if tpm > 0 then
  redis.call("ZADD", KEYS[3], now, request_id)
  redis.call("HSET", KEYS[4], request_id, cost)
  redis.call("INCRBY", KEYS[5], cost)
  redis.call("PEXPIRE", KEYS[3], 61000)
  redis.call("PEXPIRE", KEYS[4], 61000)
  redis.call("PEXPIRE", KEYS[5], 61000)
  result[7] = math.max(0, tpm - used - cost)
end
if max_conc > 0 then
  redis.call("ZADD", KEYS[6], now + lease_ms, request_id)
  -- Only ever extend the key's life: a short lease must not expire longer ones.
  if redis.call("PTTL", KEYS[6]) < lease_ms + 1000 then
    redis.call("PEXPIRE", KEYS[6], lease_ms + 1000)
  end
end
return finish(0, 0)
