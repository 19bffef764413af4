-- quota: a batch of calls, run in order and atomically.  Each call settles finished requests
-- of one token, then (optionally) admits a new one against the token's limits and budget and
-- its team's.  Settlements ride along with the next admission of the same token (or travel
-- alone after a short delay), and a replica sends the calls of one event-loop turn bound for
-- one server as one batch (store/batching.py): a limited request costs at most one script
-- call, and under load a fraction of one.
--
-- What a batch costs is mostly per owner, not per call: each owner's windows are read with
-- one HMGET and written with one HSET, and its leases read with one ZMSCORE (the leases its
-- settlements name; none for a single settlement) and written with one ZADD and one ZREM,
-- however many calls it holds.
-- Inside Redis a number turned into a string (or back) costs about as much as a command, so
-- the limits travel as one string parsed once per batch, and so are lease expiries
-- formatted.  Each argument costs too (Redis parses it, then makes it a Lua string), and so
-- does each number of an answer: the layout below spends as few as it can (a lone
-- settlement's call is 8 arguments), and a call that only settles answers one number, not
-- eight.  `uv run python -m bench.script_replay` measures the script's Redis time per call.
--
-- ARGV[1] U, then U keys not declared in KEYS (on a Cluster, where a command's keys must
-- share a slot, only the first owner's keys are declared: the others follow KEYS here).  Then
-- T, then the T owners (a token, or a team's token, numbered 1, 2, ... in turn) that are a
-- team's token, in order; KEYS and then the undeclared keys hold each owner's keys in turn:
-- token windows (hash), token leases (zset: entry id -> lease expiry, ms), token budget
-- (hash), then for a team's token the team's windows, leases and budget.  Then M, the number
-- of calls, then for each: its head, (4 * S + A) * 1024 + its owner (S its settlements; A 0
-- when it only settles, 1 when it admits, 2 when it admits and holds a budget reservation),
-- then its arguments.
--
-- The window is the current second and the 59 before it, [now - 59, now]: a request counts
-- until 60 s after the start of its second, so a refusal never asks for a longer wait than
-- 60 s.  Windows hash fields: "o" the oldest second that may hold a bucket; "rs"/"ts"
-- requests/tokens in the window; "b0" to "b59" a ring of 60 one-second slots.  Slot i holds
-- the bucket of the one second in [o, o + 59] that is i modulo 60 (or 0, or nothing: no
-- request then): the second's requests and tokens as one number, requests * 2^33 + tokens
-- (exact in a double: fewer than 2^20 requests of one owner run in one second on one Redis
-- server, and a request that would take a second's tokens to 2^33 is refused as over tpm).
-- A bucket is dropped once its second left the window: "o" moves on and the slots of the
-- seconds it passed are read (their counts leave "rs"/"ts") and set to 0 in the HSET that
-- writes the side back.  So nothing is ever deleted, and for an owner visited about once a
-- second the one second that leaves is now's slot (now - 60), read already: aging costs no
-- command.  One field per second, and short names: Redis keeps a hash this small as a
-- listpack and finds a field by scanning it.  At most 60 slots: memory per owner is bounded
-- whatever its limits.  Bookkeeping fields: "c" leases held (a count kept beside
-- the leases zset, never below it: recounted when missing or at the limit), "x" the second the
-- key's expiry was last pushed out (every REFRESH_S, to 61 s + REFRESH_S, so the key outlives
-- its newest bucket by 61 s without a PEXPIRE per request; the leases that expired unsettled
-- are dropped then too), "y" the time (ms) until which the leases key is known to live.
-- Budget hash fields (micro-USD; durable, no expiry): "k" period kind (0 total, 1 UTC day,
-- 2 ISO week, 3 UTC month), "p" start of the period (ms) that "s" belongs to, "s" settled
-- spend of that period, "r" reserved by requests in flight, "e<entry>" each one's reservation.
-- A reservation is held until its request settles; if its lease expires first (the replica
-- died), the reservation is charged in full: spend is never under-counted.
--
-- A call's arguments: S times, a settlement:
--   entry id, admission second, tokens to correct its bucket by (real less reserved; 0 when
--   the reservation stands), real cost in micro-USD (-1: charge the budget reservation in
--   full; -2: no budget was reserved, so no budget is read)
-- then, when admitting:
--   entry id, tokens to reserve, the terms: one comma-separated string (the same for every
--   call of an owner, parsed once per batch) of
--     token rpm, tpm, max_concurrency, team rpm, tpm, max_concurrency   (0 = no limit),
--     token budget (micro-USD, -1 none), its period kind, team budget, its period kind,
--     lease ms (0: no lease, nothing will settle),
--   then, when A is 2, the worst-case cost (micro-USD) to reserve on the budgets.
-- A settlement applies only if its lease (or, for budgets, its reservation) is still held:
-- it is idempotent; a lease that expired keeps its reservation, which errs on the safe side.
-- Returns for each call that admits {status, retry_ms, now_ms, limiting side (0 token, 1
-- team), rpm remaining, tpm remaining, budget remaining (micro-USD), leases free after an
-- admission} with remaining -1 when unlimited (and leases free only when admitted); 0 for a
-- call that only settles.
-- status: 0 admitted, 1 over rpm, 2 over tpm, 3 over max_concurrency, 4 over budget
-- (retry_ms: until the period ends; 0 when it never does).
-- Globals as locals: in Redis's Lua each use of a global is a table lookup (two for
-- redis.call), and this script makes hundreds per batch.  A numeric string on the hot path
-- (an argument, a field read) is made a number by arithmetic, s + 0 (a field Redis had not:
-- false, made nil), not by tonumber(), which parses it twice behind a C call.
local call, tonumber, tostring, unpack = redis.call, tonumber, tostring, unpack
local ARGV = ARGV
local pairs, ipairs, type = pairs, ipairs, type
local floor, max, fmt = math.floor, math.max, string.format
local t = call("TIME")
local now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
local now_s = floor(now / 1000)
local DAY = 86400000
local REFRESH_S = 10
local PACK = 8589934592  -- 2^33: a bucket is requests * PACK + tokens
local RING = 60  -- slots: the window's 60 seconds
local SPAN = RING - 1  -- the window is [now - SPAN, now]
local OWNER_BASE = 1024  -- a call's head: (4 * S + A) * OWNER_BASE + its owner (see above)
-- The field of second s's slot; names made once per script call, when first needed (a number
-- turned into a string costs about as much as a command here).
local names = {}
local function slot(s)
  local i = s % RING
  local name = names[i]
  if name == nil then
    name = "b" .. i
    names[i] = name
  end
  return name
end
local B_NOW = slot(now_s)
local SETTLED = 0  -- the answer of every call that only settles

-- A bucket's requests and tokens.
local function split(packed)
  local r = floor(packed / PACK)
  return r, packed - r * PACK
end

-- Calendar arithmetic (days since 1970-01-01 <-> year, month), as store/periods.py.
local function days_from_civil(y, m)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local doy = floor((153 * ((m + 9) % 12) + 2) / 5)
  return era * 146097 + yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy - 719468
end
local function civil_from_days(z)
  z = z + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524)
    - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end
-- Start and end (ms) of the period of `kind` holding now; "total" is 0, -1 (no end).
local function period(kind)
  if kind == 0 then return 0, -1 end
  local day = floor(now / DAY)
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
  local v = call("HMGET", b, "k", "p")
  local stored = tonumber(v[1])
  kind = kind or stored
  if kind == nil then return end
  local start = period(kind)
  if stored ~= kind or tonumber(v[2]) ~= start then
    call("HSET", b, "k", kind, "p", start, "s", 0)
  end
end

-- Settle entry `e`'s reservation on budget `b` with `cost` (-1: the reservation in full).
local function charge(b, e, cost)
  local held = call("HGET", b, "e" .. e)
  if not held then return end
  held = tonumber(held)
  roll(b, nil)
  call("HDEL", b, "e" .. e)
  call("HINCRBY", b, "r", -held)
  call("HINCRBY", b, "s", cost >= 0 and cost or held)
end

-- Leases of the batch, by leases key: the scores the batch's settlements found at its start
-- (one ZMSCORE per key), and the changes it makes, written once at its end (one ZADD, one
-- ZREM, and the key's expiry) or before anything that reads the zset itself.
-- {score = entry -> score (an entry settled is removed), adds = {score, entry, ...}, rems =
--  {entry, ...}, purged = expired entries were dropped, expiry = "persist" or a time (ms) or
--  nil, fresh = the expiry a key created by the ZADD gets}; the tables only once needed (most
--  owners of a batch add one lease and settle one).  A key where the batch settles one entry
--  alone is in `direct` instead: that entry is removed at once by ZREM, no ZMSCORE (and no
--  table made for a lone settlement).
-- A leases key also holds LIVE, a member scored +inf that is never a lease: the key does not
-- vanish when its last lease is settled (to be created again, with a new expiry, by the next
-- admission).  Every ZADD names LIVE too, so its answer (members added) says whether the key
-- was created (LIVE was missing): only then does it need an expiry set at once.  Leases are
-- counted below +inf ("(+inf"), and expired ones are dropped by score, which never reaches it.
local leases, direct = {}, {}
local LIVE = "~"
local function lease_set(l)
  local set = leases[l]
  if set == nil then
    set = {purged = false, score = nil, adds = nil, rems = nil, expiry = nil, fresh = nil}
    -- (its keys named here: the table is made with room for them)
    leases[l] = set
  end
  return set
end

-- Write the pending changes of leases key `l`: adds first, so that removing the last old
-- lease never drops the key (and its expiry) under a lease just added.
local function sync(l)
  local set = leases[l]
  if set == nil then return end
  if set.adds then
    local adds = set.adds
    if call("ZADD", l, unpack(adds)) * 2 >= #adds and set.expiry == nil then
      set.expiry = set.fresh  -- the key was created (LIVE was new): it has no expiry yet
    end
    set.adds = nil
  end
  if set.rems then
    call("ZREM", l, unpack(set.rems))
    set.rems = nil
  end
  if set.expiry == "persist" then
    call("PERSIST", l)
  elseif set.expiry ~= nil then
    call("PEXPIREAT", l, set.expiry)
  end
  set.expiry = nil
end

-- Release entry `e`'s lease on `l`: true if it was held (the proof that its request was
-- admitted and is not settled yet), as ZREM would answer.
local function take(l, e)
  if direct[l] then return call("ZREM", l, e) == 1 end
  local set = leases[l]
  local score = set and set.score and set.score[e]
  if not score or (set.purged and score <= now) then return false end
  set.score[e] = nil
  local rems = set.rems
  if rems == nil then
    set.rems = {e}
  else
    rems[#rems + 1] = e
  end
  return true
end

-- Drop the expired leases of `l`; their budget reservations on `b` are charged in full.
-- Returns how many there were.
local function expire(l, b)
  sync(l)
  local gone = call("ZRANGEBYSCORE", l, "-inf", now)
  if #gone == 0 then return 0 end
  for _, e in ipairs(gone) do charge(b, e, -1) end
  call("ZREMRANGEBYSCORE", l, "-inf", now)
  lease_set(l).purged = true
  return #gone
end

-- The call being run (set by run() for each call of the batch; the helpers below read it).
local kw, kl, kb, tw, tl, tb, in_team  -- its keys: token windows, leases, budget, then team's
local admitting, entry, cost, lease_ms, reserve, expiry
local limits, budgets = {0, 0, 0, 0, 0, 0}, {-1, 0, -1, 0}  -- read only when admitting

-- A call's terms, parsed once per batch for each distinct string: {limits = 6 numbers,
-- budgets = 4 numbers, lease = lease ms, expiry = a lease's expiry as the string ZADD takes
-- (a number passed to redis.call is formatted on every call)}.
local parsed = {}  -- string -> its terms
local function terms_of(text)
  local v = parsed[text]
  if v == nil then
    local n = {}
    for x in string.gmatch(text, "[^,]+") do n[#n + 1] = tonumber(x) end
    v = {limits = {n[1], n[2], n[3], n[4], n[5], n[6]}, budgets = {n[7], n[8], n[9], n[10]},
      lease = n[11], expiry = tostring(now + n[11])}
    parsed[text] = v
  end
  return v
end
-- The call's corrections: admission second -> tokens to add (real less reserved), `corrected`
-- of them.  The table is emptied and used again by each call, and so are the other buffers
-- below: making a table costs about as much as a command here.
local corrections, corrected = {}, 0

-- The windows read so far in this script call, by key, in the order first read.  A batch with
-- several calls of one owner reads and writes its windows once: later calls see the values
-- the earlier ones left.  A side is one flat table, since in Redis's Lua making a table, or
-- adding a key to one, costs about as much as a command:
--   w, l, b      its windows, leases and budget keys;
--   o, rs, ts, c, x, y   the windows fields of those names (nil: absent), rn and tn this
--                second's requests and tokens (nil: no bucket yet); o0, rs0, ... tn0 the same
--                as read (x is written by close alone), to write back only what changed (rn0
--                is -1 when now's slot held a second that left: it is written, if only as 0);
--   t            nil, or other slots, by field, to write back as they are here: the buckets
--                that settlements correct, and 0 in the slots of seconds that left the
--                window; false for a slot read that is empty (not written).
local cache, opened = {}, {}

-- The slots that a call's settlements correct and its side has not read, `missing` of them;
-- and the slots of seconds leaving a window that were not read with it.
local fields, missing, unread = {}, 0, {}

-- Keep the `missing` slots read (values `v` from index `first`) in side.t.
local function keep_buckets(side, v, first)
  local t = side.t
  if t == nil then
    t = {}
    side.t = t
  end
  for i = 1, missing do
    local n = v[first + i - 1]
    n = n and n + 0
    t[fields[i]] = n and n > 0 and n
  end
end

-- Drop the seconds [o, now - 60] that left the window of a side just read (`bn` its slot of
-- now, which is now - 60's): their counts leave "rs"/"ts" and their slots are set to 0.  The
-- key expires 61 to 71 s after its newest bucket, and o is never more than 59 s older than
-- that bucket, so at most the 60 slots of [o, o + 59] hold anything.
local function age(side, bn)
  local o, t = side.o, side.t
  local last = now_s - RING
  if last > o + SPAN then last = o + SPAN end
  local n = 0
  for s = o, last do
    local f = slot(s)
    if f ~= B_NOW and (t == nil or t[f] == nil) then
      n = n + 1
      unread[n] = f
    end
  end
  local got = n > 0 and call("HMGET", side.w, unpack(unread, 1, n))
  local freed_r, freed_t, j = 0, 0, 0
  for s = o, last do
    local f = slot(s)
    local packed
    if f == B_NOW then
      packed = bn
    elseif t ~= nil and t[f] ~= nil then
      packed = t[f] or nil
    else
      j = j + 1
      packed = tonumber(got[j])
    end
    if packed ~= nil and packed > 0 then
      local r, tokens = split(packed)
      freed_r, freed_t = freed_r + r, freed_t + tokens
      if f == B_NOW then
        side.rn0 = -1
      else
        if t == nil then  -- made only when needed: most visits drop now's slot alone
          t = {}
          side.t = t
        end
        t[f] = 0
      end
    end
  end
  side.o, side.rs, side.ts = now_s - SPAN, (side.rs or 0) - freed_r, (side.ts or 0) - freed_t
end

local function open(w, l, b, freed)
  local side = cache[w]
  missing = 0
  if corrected > 0 then
    -- A bucket older than now - SPAN left the window, whatever its slot holds now.
    for s in pairs(corrections) do
      if s ~= now_s and s >= now_s - SPAN then
        local f = slot(s)
        if side == nil or side.t == nil or side.t[f] == nil then
          missing = missing + 1
          fields[missing] = f
        end
      end
    end
  end
  if side == nil then
    local v
    if missing == 0 then
      v = call("HMGET", w, "o", "rs", "ts", "c", "x", "y", B_NOW)
    else
      v = call("HMGET", w, "o", "rs", "ts", "c", "x", "y", B_NOW, unpack(fields, 1, missing))
    end
    local o, rs, ts, c, x, y, bn = v[1], v[2], v[3], v[4], v[5], v[6], v[7]
    o, rs, ts = o and o + 0 or nil, rs and rs + 0 or nil, ts and ts + 0 or nil
    c, x, y, bn = c and c + 0 or nil, x and x + 0 or nil, y and y + 0 or nil, bn and bn + 0 or nil
    local rn, tn
    local aged = o ~= nil and o < now_s - SPAN  -- now's slot holds now - 60 (or nothing)
    if bn ~= nil and not aged then  -- split() written out: this runs on every visit
      rn = floor(bn / PACK)
      tn = bn - rn * PACK
    end
    side = {w = w, l = l, b = b, o = o, rs = rs, ts = ts, c = c, x = x, y = y, rn = rn,
      tn = tn, o0 = o, rs0 = rs, ts0 = ts, c0 = c, y0 = y, rn0 = rn, tn0 = tn, t = nil}
    cache[w] = side
    opened[#opened + 1] = side
    if missing > 0 then keep_buckets(side, v, 8) end
    if aged then age(side, bn) end
  elseif missing > 0 then
    keep_buckets(side, call("HMGET", w, unpack(fields, 1, missing)), 1)
  end
  if corrected > 0 then
    -- Corrections of buckets still in the window.  Once o is no older than now - SPAN, a
    -- slot of a second in [now - SPAN, now] holds that second's bucket, or 0 (or false) when it has
    -- none: a bucket is never 0, it counts its requests.
    for s, delta in pairs(corrections) do
      if s == now_s then
        if side.tn ~= nil then
          side.tn = side.tn + delta
          side.ts = (side.ts or 0) + delta
        end
      elseif s >= now_s - SPAN then
        local f = slot(s)
        local packed = side.t[f]
        if packed and packed > 0 then
          side.t[f] = packed + delta
          side.ts = (side.ts or 0) + delta
        end
      end
    end
  end
  if freed > 0 and side.c ~= nil then side.c = max(0, side.c - freed) end
  return side
end

-- Write what changed of a side (numbers formatted as integers here: cheaper than the
-- conversion redis.call makes).
local written = {}  -- close()'s HSET arguments: the first n of them
local function close(side)
  local a, n = written, 0
  if side.rs ~= side.rs0 then a[n + 1], a[n + 2], n = "rs", fmt("%d", side.rs), n + 2 end
  if side.ts ~= side.ts0 then a[n + 1], a[n + 2], n = "ts", fmt("%d", side.ts), n + 2 end
  if side.c ~= side.c0 then a[n + 1], a[n + 2], n = "c", fmt("%d", side.c), n + 2 end
  if side.rn ~= side.rn0 or side.tn ~= side.tn0 then
    a[n + 1], a[n + 2], n = B_NOW, fmt("%d", (side.rn or 0) * PACK + (side.tn or 0)), n + 2
  end
  if side.o ~= side.o0 then a[n + 1], a[n + 2], n = "o", fmt("%d", side.o), n + 2 end
  if side.y ~= side.y0 then a[n + 1], a[n + 2], n = "y", fmt("%d", side.y), n + 2 end
  if side.t ~= nil then
    for f, value in pairs(side.t) do
      if value then a[n + 1], a[n + 2], n = f, fmt("%d", value), n + 2 end
    end
  end
  if n == 0 then return end
  local refresh = side.x == nil or now_s - side.x >= REFRESH_S
  if refresh then
    -- With the expiry, drop the leases that expired unsettled (their replica died, or their
    -- settlement was lost): a token without a concurrency limit or a budget never recounts
    -- its leases, and they would pile up for as long as it is busy.  (A side checked against
    -- a budget, or recounted at its concurrency limit, had them dropped in this batch.)
    local set = leases[side.l]
    local gone = (set and set.purged) and 0 or expire(side.l, side.b)
    if gone > 0 and side.c ~= nil then
      side.c = max(0, side.c - gone)
      a[n + 1], a[n + 2], n = "c", fmt("%d", side.c), n + 2  -- a later field wins in HSET
    end
    a[n + 1], a[n + 2], n = "x", fmt("%d", now_s), n + 2
  end
  call("HSET", side.w, unpack(a, 1, n))
  if refresh then call("PEXPIRE", side.w, (61 + REFRESH_S) * 1000) end
end

local function limited(first, budget) -- does this side have anything to check?
  return limits[first] > 0 or limits[first + 1] > 0 or limits[first + 2] > 0 or budget >= 0
end

-- Leases held on a side, expired ones dropped: the count "c" unless it is missing or says the
-- limit is reached, then a recount.
local function held(side, conc, budget)
  local c = side.c
  if c == nil or c >= conc then
    sync(side.l)
    if budget < 0 then
      call("ZREMRANGEBYSCORE", side.l, "-inf", now)
      lease_set(side.l).purged = true
    end
    c = call("ZCOUNT", side.l, "-inf", "(+inf")
    side.c = c
  end
  return c
end

-- A side's bucket of second `s` (in the window) as this batch left it, packed: nil when its
-- slot was not read here.  Now's slot is read with the side, and what it held is now's only
-- when rn says so.
local function cached(side, s)
  if s == now_s then return side.rn and side.rn * PACK + side.tn or 0 end
  if side.t ~= nil then
    local v = side.t[slot(s)]
    if v ~= nil then return v or 0 end
  end
  return nil
end

-- Milliseconds until enough of the window leaves that `need` more fits under `limit`; of
-- tokens (`tokens` true) or of requests.
local function wait_for(side, tokens, used, need, limit)
  if need > limit then return 60000 end
  local window = {}
  for s = now_s - SPAN, now_s do window[#window + 1] = slot(s) end
  local v = call("HMGET", side.w, unpack(window))
  local freed = 0
  for i = 1, #window do
    local s = now_s - RING + i
    local packed = cached(side, s) or tonumber(v[i])
    if packed ~= nil then
      local r, t = split(packed)
      freed = freed + (tokens and t or r)
    end
    -- The bucket of second s leaves the window when second s + 60 begins.
    if used - freed + need <= limit then return max(1, (now_s + i) * 1000 - now) end
  end
  return 60000
end

-- 3. check one side; returns status, retry, rpm remaining, tpm remaining, budget remaining,
-- leases free after this admission (-1 when unlimited).
local function check(side, rpm, tpm, conc, budget, kind)
  local left = -1
  if budget >= 0 then
    local gone = expire(side.l, side.b)
    if gone > 0 and side.c ~= nil then side.c = max(0, side.c - gone) end
    roll(side.b, kind)
    local v = call("HMGET", side.b, "s", "r")
    local spent, reserved = tonumber(v[1]) or 0, tonumber(v[2]) or 0
    left = budget - spent - reserved
    if reserve > left then
      -- Room comes back when requests in flight settle, or else when the period ends.
      local retry = 1000
      if budget - spent < reserve then
        local _, stop = period(kind)
        retry = stop < 0 and 0 or stop - now
      end
      return 4, retry, -1, -1, max(0, left)
    end
    left = left - reserve
  end
  local rpm_left, tpm_left = -1, -1
  if rpm > 0 or tpm > 0 then
    local rs, ts = side.rs or 0, side.ts or 0
    if rpm > 0 and rs + 1 > rpm then
      return 1, wait_for(side, false, rs, 1, rpm), 0, -1, left
    end
    if tpm > 0 and ts + cost > tpm then
      return 2, wait_for(side, true, ts, cost, tpm), -1, max(0, tpm - ts), left
    end
    if (side.tn or 0) + cost >= PACK then  -- this second's bucket is full (see the header)
      return 2, 1000, -1, tpm > 0 and max(0, tpm - ts) or -1, left
    end
    rpm_left = rpm > 0 and rpm - rs - 1 or -1
    tpm_left = tpm > 0 and tpm - ts - cost or -1
  end
  local conc_left = -1
  if conc > 0 then
    local c = held(side, conc, budget)
    if c >= conc then return 3, 1000, -1, -1, left end
    conc_left = conc - c - 1
  end
  return 0, 0, rpm_left, tpm_left, left, conc_left
end

-- 4. record an admission on a side that passed.
local function record(side, windowed, lease, durable, hold)
  if windowed then
    if side.o == nil then side.o = now_s end  -- a new window: no older bucket to drop
    side.rn = (side.rn or 0) + 1
    side.rs = (side.rs or 0) + 1
    side.tn = (side.tn or 0) + cost
    if cost > 0 then side.ts = (side.ts or 0) + cost end
  end
  if lease then
    local before = side.c
    local set_ = lease_set(side.l)
    local adds = set_.adds
    if adds == nil then
      set_.adds = {"+inf", LIVE, expiry, entry}
    else
      adds[#adds + 1] = expiry
      adds[#adds + 1] = entry
    end
    if before ~= nil then side.c = before + 1 end
    if durable then
      -- A lease that guards a budget reservation must outlive any gap in renewals: its key
      -- does not expire (it empties as requests settle; expired entries are charged).
      set_.expiry = "persist"
    else
      -- Every lease runs lease_ms from its admission or renewal; the key outlives the newest.
      local until_ms = now + lease_ms + 1000 + REFRESH_S * 1000
      set_.fresh = until_ms
      if side.y == nil or side.y < now + lease_ms + 1000 then
        set_.expiry = until_ms
        side.y = until_ms
      end
    end
  end
  if hold then
    call("HSET", side.b, "e" .. entry, reserve)
    call("HINCRBY", side.b, "r", reserve)
  end
end

-- The batch's keys: KEYS, then the undeclared ones.
local K = KEYS
local undeclared = tonumber(ARGV[1])
if undeclared > 0 then
  K = {}
  for i = 1, #KEYS do K[i] = KEYS[i] end
  for i = 1, undeclared do K[#KEYS + i] = ARGV[1 + i] end
end

-- A settlement travelling alone (arguments from ARGV[base]) of a token without a team or a
-- budget, whose windows this batch has not opened: its lease, then only the fields it changes.
-- It does not age the window (the token's next admission does): a bucket of second s in
-- [now - 59, now] is in its slot once o >= s - 59, which the admission that made it ensured;
-- and the key outlives that bucket by more than 60 s (close() pushed its expiry then), so
-- nothing here needs to push it.  The HSET runs at once: a later call of the batch for the
-- same token reads its windows after it.
local function settle_alone(base)
  if not take(kl, ARGV[base]) then return SETTLED end
  local s, delta = ARGV[base + 1] + 0, ARGV[base + 2] + 0
  local f = delta ~= 0 and s >= now_s - SPAN and slot(s)
  local v = f and call("HMGET", kw, "o", "c", "ts", f) or call("HMGET", kw, "o", "c")
  local o, c = v[1], v[2]
  if not o then return SETTLED end  -- the window is gone: nothing to correct or count
  o, c = o + 0, c and c + 0
  local w, n = written, 0
  if c and c > 0 then w[1], w[2], n = "c", fmt("%d", c - 1), 2 end
  local packed = f and o >= s - SPAN and v[4]
  if packed and packed + 0 > 0 then
    w[n + 1], w[n + 2] = f, fmt("%d", packed + delta)
    w[n + 3], w[n + 4], n = "ts", fmt("%d", (v[3] or 0) + delta), n + 4
  end
  if n > 0 then call("HSET", kw, unpack(w, 1, n)) end
  return SETTLED
end

-- One call of the batch: its owner's keys from K[k] (3, or 6 with a team), its arguments
-- from ARGV[a]: `n` settlements, then an admission when `admits` (A, see the header) is not
-- 0.  Returns its answer.
local function run(k, nk, a, n, admits)
  kw, kl, kb = K[k], K[k + 1], K[k + 2]
  in_team = nk == 6
  if in_team then tw, tl, tb = K[k + 3], K[k + 4], K[k + 5] end
  if n == 1 and admits == 0 and not in_team and ARGV[a + 3] == "-2" and cache[kw] == nil then
    return settle_alone(a)
  end

  -- 1. settlements: each lease removed is the proof that its request was admitted and not
  -- yet settled; their token corrections are applied to the windows below.
  if corrected > 0 then
    for second in pairs(corrections) do corrections[second] = nil end
    corrected = 0
  end
  local released, team_released = 0, 0  -- leases removed on the token side, on the team side
  for i = 0, n - 1 do
    local base = a + i * 4
    local e = ARGV[base]
    local c = ARGV[base + 3]  -- compared as a string: most settlements reserved no budget
    if take(kl, e) then
      released = released + 1
      local delta = ARGV[base + 2] + 0
      if delta ~= 0 then
        local second = ARGV[base + 1] + 0
        local sum = corrections[second]
        if sum == nil then corrected = corrected + 1 end
        corrections[second] = (sum or 0) + delta
      end
    end
    -- Budgets: each side's reservation is its own proof (one charge per entry and side).
    if c ~= "-2" then charge(kb, e, tonumber(c)) end
    if in_team then
      if take(tl, e) then team_released = team_released + 1 end
      if c ~= "-2" then charge(tb, e, tonumber(c)) end
    end
  end

  local p = a + n * 4
  admitting = admits > 0
  if admitting then
    entry = ARGV[p]
    cost = ARGV[p + 1] + 0
    local v = terms_of(ARGV[p + 2])
    limits, budgets, lease_ms, expiry = v.limits, v.budgets, v.lease, v.expiry
    reserve = admits == 2 and ARGV[p + 3] + 0 or 0
  end
  local team_budget = in_team and budgets[3] or -1
  -- Leases: the token's is the proof of admission that settlement looks for; the team's
  -- counts its concurrency and guards its budget reservation.
  local token_lease = admitting and lease_ms > 0
  local team_lease = token_lease and in_team and (limits[6] > 0 or team_budget >= 0)

  -- 2. the windows of each side
  local mine, team  -- the token's side, the team's
  if (admitting and (limited(1, budgets[1]) or token_lease)) or n > 0 then
    mine = open(kw, kl, kb, released)
  end
  if in_team and ((admitting and (limited(4, team_budget) or team_lease)) or n > 0) then
    team = open(tw, tl, tb, team_released)
  end
  if not admitting then return SETTLED end

  -- 3. check each side, 4. record on both if both passed
  local rpm_left, tpm_left, budget_left, conc_left = -1, -1, -1, -1
  if limited(1, budgets[1]) then
    local status, retry
    status, retry, rpm_left, tpm_left, budget_left, conc_left = check(
      mine, limits[1], limits[2], limits[3], budgets[1], budgets[2])
    if status ~= 0 then return {status, retry, now, 0, rpm_left, tpm_left, budget_left, -1} end
  end
  if in_team and limited(4, team_budget) then
    local status, retry, rl, tl_, bl, cl = check(
      team, limits[4], limits[5], limits[6], team_budget, budgets[4])
    if status ~= 0 then return {status, retry, now, 1, rl, tl_, bl, -1} end
    -- The tighter side is what the client sees in its headers.
    if rl >= 0 and (rpm_left < 0 or rl < rpm_left) then rpm_left = rl end
    if tl_ >= 0 and (tpm_left < 0 or tl_ < tpm_left) then tpm_left = tl_ end
    if bl >= 0 and (budget_left < 0 or bl < budget_left) then budget_left = bl end
    if cl >= 0 and (conc_left < 0 or cl < conc_left) then conc_left = cl end
  end
  if mine then
    record(mine, limits[1] > 0 or limits[2] > 0, token_lease, budgets[1] >= 0,
      budgets[1] >= 0)
  end
  if team then
    record(team, limits[4] > 0 or limits[5] > 0, team_lease, team_budget >= 0,
      team_budget >= 0)
  end
  return {0, 0, now, 0, rpm_left, tpm_left, budget_left, conc_left}
end

-- The batch's owners: their keys, in turn in K (first key and key count, by owner): 3, or 6
-- for the teams' tokens listed.
local t_at = 2 + undeclared
local teams = ARGV[t_at] + 0
local owners = (#KEYS + undeclared) / 3 - teams
local first_key, key_count = {}, {}
local k, listed = 1, 1
local team_owner = teams > 0 and ARGV[t_at + 1] + 0
for i = 1, owners do
  local nk = 3
  if i == team_owner then
    nk, listed = 6, listed + 1
    team_owner = listed <= teams and ARGV[t_at + listed] + 0
  end
  first_key[i], key_count[i] = k, nk
  k = k + nk
end
local first_call = t_at + teams + 2
if undeclared > 0 then
  -- Touch one key of every owner not declared before anything is written (an owner's keys
  -- share a slot): one whose slot this server does not serve fails the script here, with
  -- nothing done, and the caller sends those calls again slot by slot.
  for i = 2, owners do call("EXISTS", K[first_key[i]]) end
end

-- Each call's owner, first argument, settlements and A (4 slots per call),
-- and the leases the batch's settlements name, read at once per leases key.
local calls = ARGV[first_call - 1] + 0
local plan = {}
local wanted = {}  -- leases key -> the entry its settlements name, or a list when several
local a = first_call
for i = 1, calls do
  local head = ARGV[a] + 0
  local owner = head % OWNER_BASE
  local shape = (head - owner) / OWNER_BASE
  local admits = shape % 4
  local n = (shape - admits) / 4
  plan[i * 4 - 3], plan[i * 4 - 2], plan[i * 4 - 1], plan[i * 4] = owner, a + 1, n, admits
  for s = 0, n - 1 do
    local e = ARGV[a + 1 + s * 4]
    for j = 1, key_count[owner] == 6 and 2 or 1 do
      local l = K[first_key[owner] + 1 + (j - 1) * 3]
      local named = wanted[l]
      if named == nil then
        wanted[l] = e
      elseif type(named) == "string" then
        wanted[l] = {named, e}
      else
        named[#named + 1] = e
      end
    end
  end
  a = a + 1 + n * 4 + (admits > 0 and admits + 2 or 0)
end
for l, named in pairs(wanted) do
  if type(named) == "string" then
    direct[l] = true  -- one settlement: its own ZREM answers for it, one command not two
  else
    local set = lease_set(l)
    local scores = call("ZMSCORE", l, unpack(named))
    set.score = {}
    for i, e in ipairs(named) do set.score[e] = tonumber(scores[i]) end
  end
end

local results = {}
for i = 1, calls do
  local owner = plan[i * 4 - 3]
  results[i] = run(first_key[owner], key_count[owner], plan[i * 4 - 2], plan[i * 4 - 1],
    plan[i * 4])
end
for _, side in ipairs(opened) do close(side) end
for l in pairs(leases) do sync(l) end
return results
