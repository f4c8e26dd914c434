--[[
Bastion rate limiting on Redis: every check of one request, and the client's penalty record (a
rate-limit ban or an inspection strike block), decided and counted atomically by one call
(bastion.ratelimit.redis_store loads it and calls it by SHA).

The arithmetic mirrors bastion/ratelimit/algorithms.py; times are integer microseconds of the
server's clock (TIME), so every instance agrees whatever its own clock says. EPSILON (1 us, the
1e-6 s of algorithms.py) is the tolerance of GCRA's time comparison; the sliding window keeps
algorithms.py's 1e-6 on estimated counts.

ARGV[1] is the operation.

"e": evaluate.
  ARGV[2]  n, the number of checks
  ARGV[3 + 7*(i-1) ...] for check i (1-based): algorithm code, limit, period (us), burst, cost,
           enforce ("1" or "0"), extra: the quota window id, the concurrency lease token, or ""
           codes: 1 gcra, 2 sliding_window, 3 fixed_window, 4 sliding_log, 5 concurrency, 6 quota
  then, with bans: client, threshold, window (us), reset_after (us), duration 1 (us), ...
  (threshold 0: the penalty record is checked, refusals are never counted)
  ARGV[#ARGV] a token unique to this call (names sorted-set members); last, so that everything
  before it is the same for every request of one client and shape (the caller caches it).
  KEYS[1..n] the checks' buckets; with bans KEYS[n+1] the penalty record, KEYS[n+2] the
  refusals, KEYS[n+3] the ban index, KEYS[n+4] the block mark.
  Reply, all integers: now, allowed (1/0), banned_for (us), new_ban (us), ban level, source of
  the penalty (0 ratelimit, 1 inspect), then per check: allowed (1/0), remaining, reset (us),
  retry_after (us). A banned or blocked client gets only the first six.

"r": release. KEYS the concurrency buckets; for KEYS[i], ARGV[2i] its cost and ARGV[2i+1] its
  lease token: the members token#1..token#cost are removed (none if they lapsed already); an
  empty token removes the cost oldest leases instead. Reply: 0.

"s": strike (inspection). For client i, KEYS[3i-2] its strike count, KEYS[3i-1] its penalty
  record and KEYS[3i] its block mark; last KEYS the ban index. ARGV[2] threshold, ARGV[3]
  window (us), ARGV[4] duration (us), then the clients. Each client's count grows (expiring one
  window after its first strike); reaching the threshold blocks it: its record keeps the longer
  of the block and a ban in force, and its level (a strike never raises the rate-limit
  escalation), and the index lists it. Reply: the clients blocked.

"p": penalty. KEYS[1] a penalty record, KEYS[2] its block mark. Reply: microseconds left of it
  (0: none) and its source (0 ratelimit, 1 inspect).

"l": lift. KEYS[1] the penalty record, KEYS[2] the refusals, KEYS[3] the ban index, KEYS[4]
  the strike count, KEYS[5] the block mark; ARGV[2] the client. Reply: 1 when a ban or block
  was active.

"b": bans. KEYS[1] the ban index. Drops the ended bans; reply: now, then client and ban end
  (us) of each active ban.

Bucket values:
  gcra            string: tat
  fixed_window    string: "window count"
  sliding_window  string: "window current previous"
  quota           string: "window count end"
  sliding_log     sorted set, one member per cost unit, scored by its time
  concurrency     sorted set, one member per held slot (token#unit), scored by its expiry
  penalty record  string: "until level", the format of releases before strike blocks shared
                  it, so their script (which matches '^(%S+) (%S+)$') still reads it, as a
                  ban, during a rolling upgrade. A ban keeps it until it ends plus
                  reset_after, for its level. A block keeps it until the block ends, and,
                  when the record has a level, reset_after past that end too: the block
                  moves the expiry by as much as it moves the end, so the record still expires
                  reset_after after its penalty (a record with a level always does). A third
                  field "inspect" (written by no release, read all the same) marks a block.
  block mark      string: the "until" of the record a strike block set; the record's source
                  is "inspect" while the mark equals its "until", else "ratelimit" (a ban
                  written over a block, by any release, changes the "until"). Expires with
                  the block
  refusals        sorted set of refusal times within the ban window
  strike count    integer, expiring one strike window after its first strike
  ban index       sorted set: client scored by its penalty's end (expires with the last one)
]]

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local op = ARGV[1]
local floor = math.floor
local call = redis.call

-- Microseconds to the integer a reply carries.
local function us(value)
    return floor(value + 0.5)
end

-- Expiry in whole milliseconds, rounded up so a bucket never expires before its reset.
local function ttl_ms(micros)
    local ms = math.ceil(micros / 1000)
    if ms < 1 then
        return 1
    end
    return ms
end

local function score_at(key, rank)
    local found = call('ZRANGE', key, rank, rank, 'WITHSCORES')
    return tonumber(found[2])
end

-- A penalty record: until (us) and level.
local function parse_record(record)
    local until_, level = string.match(record, '^(%S+) (%S+)')
    return tonumber(until_), tonumber(level)
end

-- What set a record ending at until_: 1 inspection strikes (its block mark or a third field
-- says so), else 0 (a rate-limit ban).
local function record_source(record, mark_key, until_)
    if string.match(record, ' inspect$') then
        return 1
    end
    local mark = call('GET', mark_key)
    if mark and tonumber(mark) == until_ then
        return 1
    end
    return 0
end

-- The index bastion bans list reads (no SCAN of the keyspace): pruned of ended penalties,
-- scored by each client's latest end, kept as long as the latest one.
local function index_penalty(index, client, until_)
    call('ZREMRANGEBYSCORE', index, '-inf', now)
    local score = call('ZSCORE', index, client)
    if not score or tonumber(score) < until_ then
        call('ZADD', index, until_, client)
    end
    if call('PTTL', index) < ttl_ms(until_ - now) then
        call('PEXPIRE', index, ttl_ms(until_ - now))
    end
end

if op == 'r' then
    for i = 1, #KEYS do
        local cost = tonumber(ARGV[2 * i])
        local lease = ARGV[2 * i + 1]
        if lease == '' then
            call('ZPOPMIN', KEYS[i], cost)
        else
            local members = {}
            for unit = 1, cost do
                members[#members + 1] = lease .. '#' .. unit
                if #members == 100 or unit == cost then
                    call('ZREM', KEYS[i], unpack(members))
                    members = {}
                end
            end
        end
    end
    return 0
end

if op == 'l' then
    local record = call('GET', KEYS[1])
    call('DEL', KEYS[1], KEYS[2], KEYS[4], KEYS[5])
    call('ZREM', KEYS[3], ARGV[2])
    if record then
        local until_ = parse_record(record)
        if until_ > now then
            return 1
        end
    end
    return 0
end

if op == 'p' then
    local record = call('GET', KEYS[1])
    if record then
        local until_ = parse_record(record)
        if until_ > now then
            return {us(until_ - now), record_source(record, KEYS[2], until_)}
        end
    end
    return {0, 0}
end

if op == 's' then
    local threshold = tonumber(ARGV[2])
    local window = tonumber(ARGV[3])
    local duration = tonumber(ARGV[4])
    local index = KEYS[#KEYS]
    local blocked = {}
    for i = 1, #ARGV - 4 do
        local count_key, record_key, mark_key = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
        local count = call('INCR', count_key)
        if count == 1 then
            call('PEXPIRE', count_key, ttl_ms(window))
        end
        if count >= threshold then
            call('DEL', count_key)
            local client = ARGV[4 + i]
            local until_, level, blocks = now + duration, 0, true
            local lifetime = ttl_ms(duration)
            local record = call('GET', record_key)
            if record then
                local stored, stored_level = parse_record(record)
                level = stored_level
                local left = call('PTTL', record_key)
                if stored >= until_ then
                    -- The penalty in force is longer: its end, its source (its mark, if a
                    -- block) and its expiry stay.
                    until_, blocks = stored, false
                    lifetime = math.max(left, lifetime)
                elseif level > 0 and left > 0 then
                    -- The record expires reset_after past its end, for its level: moved by as
                    -- much as the block moves the end.
                    lifetime = math.max(lifetime, left + ttl_ms(until_ - stored))
                elseif left > lifetime then
                    lifetime = left
                end
            end
            call('SET', record_key, string.format('%.17g %d', until_, level), 'PX', lifetime)
            if blocks then
                call('SET', mark_key, string.format('%.17g', until_), 'PX', ttl_ms(duration))
            end
            index_penalty(index, client, until_)
            blocked[#blocked + 1] = client
        end
    end
    return blocked
end

if op == 'b' then
    call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    local found = call('ZRANGEBYSCORE', KEYS[1], string.format('(%d', now), '+inf', 'WITHSCORES')
    local reply = {now}
    for i = 1, #found, 2 do
        reply[#reply + 1] = found[i]
        reply[#reply + 1] = floor(tonumber(found[i + 1]))
    end
    return reply
end

local n = tonumber(ARGV[2])
local token = ARGV[#ARGV]
local banning = #KEYS > n
local ban_at = 3 + 7 * n

if banning then
    local record = call('GET', KEYS[n + 1])
    if record then
        local until_, level = parse_record(record)
        if until_ > now then
            return {now, 0, us(until_ - now), 0, level, record_source(record, KEYS[n + 4], until_)}
        end
    end
end

local reply = {now, 1, 0, 0, 0, 0}
local allowed_all = true
-- What each allowed check writes if the whole request is allowed: a string value and its
-- expiry, or the members to add to a sorted set.
local values = {}
local lifetimes = {}

for i = 1, n do
    local at = 3 + 7 * (i - 1)
    local code = ARGV[at]
    local limit = tonumber(ARGV[at + 1])
    local period = tonumber(ARGV[at + 2])
    local cost = tonumber(ARGV[at + 4])
    local key = KEYS[i]
    local allowed, remaining, reset, retry

    if code == '1' then
        local burst = tonumber(ARGV[at + 3])
        local interval = period / limit
        local tau = interval * burst
        local tat = tonumber(call('GET', key) or 0)
        local base = tat > now and tat or now
        local new_tat = base + interval * cost
        local backlog = new_tat - now
        if backlog <= tau + 1 then
            allowed, remaining, reset, retry = true, floor((tau - backlog + 1) / interval), backlog, 0
            values[i] = string.format('%.17g', new_tat)
            lifetimes[i] = backlog
        else
            allowed, remaining, reset, retry = false, 0, base - now, backlog - tau
        end
    elseif code == '3' then
        local current = floor(now / period)
        local count = 0
        local state = call('GET', key)
        if state then
            local window, stored = string.match(state, '^(%S+) (%S+)$')
            if tonumber(window) == current then
                count = tonumber(stored)
            end
        end
        reset = (current + 1) * period - now
        if count + cost <= limit then
            allowed, remaining, retry = true, limit - count - cost, 0
            values[i] = string.format('%.17g %d', current, count + cost)
            lifetimes[i] = reset
        else
            allowed, remaining, retry = false, 0, reset
        end
    elseif code == '2' then
        local now_window = floor(now / period)
        local current, previous = 0, 0
        local state = call('GET', key)
        if state then
            local window, stored_current, stored_previous =
                string.match(state, '^(%S+) (%S+) (%S+)$')
            window = tonumber(window)
            if window == now_window then
                current, previous = tonumber(stored_current), tonumber(stored_previous)
            elseif window == now_window - 1 then
                previous = tonumber(stored_current)
            end
        end
        local elapsed = (now - now_window * period) / period
        local estimate = previous * (1 - elapsed) + current
        if estimate + cost <= limit + 1e-6 then
            allowed, retry = true, 0
            remaining = floor(limit - estimate - cost + 1e-6)
            reset = (now_window + 2) * period - now
            values[i] = string.format('%.17g %d %d', now_window, current + cost, previous)
            lifetimes[i] = reset
        else
            allowed, remaining = false, 0
            if current > 0 then
                reset = (now_window + 2) * period - now
            elseif previous > 0 then
                reset = (now_window + 1) * period - now
            else
                reset = 0
            end
            if cost > limit then
                retry = period
            elseif previous > 0 and current + cost <= limit then
                retry = (1 - (limit - cost - current) / previous - elapsed) * period
            else
                local weight = 0
                if current > limit - cost then
                    weight = 1 - (limit - cost) / current
                end
                retry = (1 - elapsed + weight) * period
            end
        end
    elseif code == '6' then
        -- A live bucket of a newer window than the request's keeps counting that window: an
        -- instance whose clock is behind around midnight never resets the count.
        local request_window = tonumber(ARGV[at + 6])
        local window, count, ends = request_window, 0, nil
        local state = call('GET', key)
        if state then
            local stored, stored_count, stored_end = string.match(state, '^(%S+) (%S+) (%S+)$')
            stored, stored_end = tonumber(stored), tonumber(stored_end)
            if stored_end > now and stored >= request_window then
                window, count, ends = stored, tonumber(stored_count), stored_end
            end
        end
        if ends == nil then
            ends = now + period
        end
        reset = ends > now and ends - now or 0
        if count + cost <= limit then
            allowed, remaining, retry = true, limit - count - cost, 0
            values[i] = string.format('%d %d %.17g', window, count + cost, ends)
            lifetimes[i] = reset
        else
            allowed, remaining, retry = false, 0, reset
        end
    else
        -- The two sorted sets: a log of counted units (score: time) or of held slots (score:
        -- expiry). Dropping what no longer counts is not a consumption, so it happens even when
        -- the request is refused.
        local is_log = code == '4'
        if is_log then
            call('ZREMRANGEBYSCORE', key, '-inf', now - period)
        else
            call('ZREMRANGEBYSCORE', key, '-inf', now)
        end
        local held = call('ZCARD', key)
        if held + cost <= limit then
            allowed, remaining, reset, retry = true, limit - held - cost, period, 0
            values[i] = is_log and now or now + period
            lifetimes[i] = period
        else
            allowed, remaining = false, 0
            if held > 0 then
                local newest = score_at(key, -1)
                reset = is_log and newest + period - now or newest - now
            else
                reset = 0
            end
            if cost > limit then
                retry = period
            else
                local edge = score_at(key, held + cost - limit - 1)
                retry = is_log and edge + period - now or edge - now
            end
        end
    end

    if allowed then
        reply[#reply + 1] = 1
    else
        reply[#reply + 1] = 0
        if ARGV[at + 5] == '1' then
            allowed_all = false
        end
    end
    reply[#reply + 1] = remaining
    reply[#reply + 1] = us(reset)
    reply[#reply + 1] = us(retry)
end

if allowed_all then
    for i = 1, n do
        local value = values[i]
        if value ~= nil then
            local at = 3 + 7 * (i - 1)
            local code = ARGV[at]
            if code == '4' or code == '5' then
                local cost = tonumber(ARGV[at + 4])
                local lease = ARGV[at + 6]
                -- One member per unit, added 100 at a time (unpack's stack is bounded). A
                -- concurrency slot is named by its request's lease token, so its release removes
                -- exactly it; a token acquired again is renewed, not added twice.
                local members = {}
                for unit = 1, cost do
                    members[#members + 1] = value
                    if code == '5' and lease ~= '' then
                        members[#members + 1] = lease .. '#' .. unit
                    else
                        members[#members + 1] = now .. ':' .. token .. ':' .. unit
                    end
                    if #members == 200 or unit == cost then
                        call('ZADD', KEYS[i], unpack(members))
                        members = {}
                    end
                end
                call('PEXPIRE', KEYS[i], ttl_ms(lifetimes[i]))
            else
                call('SET', KEYS[i], value, 'PX', ttl_ms(lifetimes[i]))
            end
        end
    end
    return reply
end

reply[2] = 0
if banning and tonumber(ARGV[ban_at + 1]) > 0 then
    -- Refusal times within the ban window, as in the memory store: the threshold-th one starts a
    -- ban, the next offence when within reset_after of the previous ban's end, else offence 1.
    local client = ARGV[ban_at]
    local refusals = KEYS[n + 2]
    local window = tonumber(ARGV[ban_at + 2])
    call('ZREMRANGEBYSCORE', refusals, '-inf', now - window)
    call('ZADD', refusals, now, now .. ':' .. token)
    if call('ZCARD', refusals) < tonumber(ARGV[ban_at + 1]) then
        call('PEXPIRE', refusals, ttl_ms(window))
        return reply
    end
    local reset_after = tonumber(ARGV[ban_at + 3])
    local level = 1
    -- The record is not in force (the request would have been refused above): the latest
    -- penalty's end, whichever source set it, and the latest ban's level.
    local record = call('GET', KEYS[n + 1])
    if record then
        local until_, previous = parse_record(record)
        if now - until_ <= reset_after then
            level = previous + 1
        end
    end
    local durations = #ARGV - 1 - (ban_at + 3)
    local duration = tonumber(ARGV[ban_at + 3 + math.min(level, durations)])
    call('SET', KEYS[n + 1], string.format('%.17g %d', now + duration, level), 'PX',
        ttl_ms(duration + reset_after))
    call('DEL', refusals)
    index_penalty(KEYS[n + 3], client, now + duration)
    reply[4] = duration
    reply[5] = level
end
return reply
