-- The decisions of engine/decisions.py, ported to run atomically inside Redis.
-- The store contract tests run the same cases against this script and the Python original.
--
-- Records are JSON strings in the codec's format (store/codec.py). Keys of a notification share
-- one hash tag, so a Redis Cluster keeps them in one slot (<tag> is {uid}, or a hash of the uid
-- when that would be an empty tag: `hash_tag` in redis.py). The script builds no key name but
-- the record keys of `clear`, from the record key prefix it is given:
--   <prefix><tag>:r:<channel>  the record       <prefix><tag>:f:<channel>  its fencing counter
--   <prefix><tag>:i            the set of the uid's channels
-- Time comes from the Redis server (TIME) unless a test passes its own clock.

local ABANDONED = 'lease expired before the attempt reported; its outcome is unknown'

local function clock(given)
  if given ~= '' then
    return tonumber(given)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function find_entry(record, number, token)
  for i = #record.h, 1, -1 do
    if record.h[i][1] == number and record.h[i][6] == token then
      return record.h[i]
    end
  end
  return nil
end

local function save(key, index, channel, record, now)
  local ttl = math.max(1, math.ceil((record.exp - now) * 1000))
  redis.call('SET', key, cjson.encode(record), 'PX', ttl)
  redis.call('SADD', index, channel)
  -- The index lives as long as its longest-lived record.
  if redis.call('PTTL', index) < ttl then
    redis.call('PEXPIRE', index, ttl)
  end
end

-- A joiner's count above the attempt in flight comes from elsewhere: that attempt is on top.
local function count_known_attempts(record, persisted, in_flight)
  if persisted <= in_flight or record.n > persisted then
    return false
  end
  record.n = persisted + 1
  return true
end

local function reap_expired_lease(record, now)
  local lease = record.lease
  if lease == nil or lease[3] > now then
    return false
  end
  record.lease = nil
  local entry = find_entry(record, lease[1], lease[2])
  if entry ~= nil and entry[3] == 'running' then
    entry[3] = 'abandoned'
    entry[5] = ABANDONED
  end
  if record.st == 'open' then
    record.err = ABANDONED
    if record.n >= record.max then
      record.st = 'exhausted'
    end
  end
  return true
end

-- KEYS: record, fence, index. ARGV: now, channel, fingerprint, max_attempts, persisted,
-- lease_seconds, retention, blocked ('1' when the circuit breaker refuses a new attempt),
-- reservation (the caller's id for the attempt it asks for, '' for none).
local function reserve()
  local now = clock(ARGV[1])
  local channel, fingerprint = ARGV[2], ARGV[3]
  local max_attempts, persisted = tonumber(ARGV[4]), tonumber(ARGV[5])
  local lease_seconds, retention = tonumber(ARGV[6]), tonumber(ARGV[7])
  local reservation = ARGV[9] or ''
  local raw = redis.call('GET', KEYS[1])
  local record
  local changed = false
  if raw then
    record = cjson.decode(raw)
    if record.fp ~= fingerprint then
      return {'mismatch', ''}
    end
  else
    record = {fp = fingerprint, max = max_attempts, n = 0, st = 'open', next = 0, err = '',
              cl = false, exp = now + retention, h = {}}
    changed = true
  end

  local function verdict(outcome)
    if changed then
      save(KEYS[1], KEYS[3], channel, record, now)
    end
    return {outcome, cjson.encode(record)}
  end

  if record.st == 'delivered' then
    return verdict('already_delivered')
  end
  if record.st == 'failed_permanent' then
    return verdict('failed_permanent')
  end
  local held = record.lease
  if held ~= nil and reservation ~= '' and held[4] == reservation and held[3] > now then
    return {'reserved', raw}
  end
  if reap_expired_lease(record, now) then
    changed = true
  end
  if record.lease ~= nil then
    if count_known_attempts(record, persisted, record.lease[1]) then
      changed = true
    end
    return verdict('running')
  end
  if record.st == 'open' then
    local used = math.max(record.n, persisted)
    if used ~= record.n or record.max ~= max_attempts then
      record.n = used
      record.max = max_attempts
      changed = true
    end
    if used >= record.max then
      record.st = 'exhausted'
      changed = true
    end
  end
  if record.st == 'exhausted' then
    return verdict('exhausted')
  end
  if now < record.next then
    return verdict('retry_later')
  end
  if ARGV[8] == '1' then
    return verdict('circuit_open')
  end

  record.n = record.n + 1
  local token = redis.call('INCR', KEYS[2])
  record.lease = {record.n, token, now + lease_seconds, reservation}
  table.insert(record.h, {record.n, now, 'running', cjson.null, '', token})
  record.cl = false
  -- Kept for the retention after the attempt may last report: never expired under its lease.
  record.exp = math.max(record.exp, now + lease_seconds + retention)
  save(KEYS[1], KEYS[3], channel, record, now)
  -- The counter outlives every record and lease it numbered, forced clears included, so a
  -- token is never issued twice for a key.
  if redis.call('PTTL', KEYS[2]) < math.ceil((record.exp - now) * 1000) then
    redis.call('PEXPIRE', KEYS[2], math.ceil((record.exp - now) * 1000))
  end
  return {'reserved', cjson.encode(record)}
end

-- KEYS: record, index. ARGV: now, channel, attempt, token, result ('released': give back a
-- reservation never sent), error, receipt JSON or '', retry_delay, retention, change
-- notification channel, the highest persisted count of the attempt's joiners, the reservation
-- (with 'released').
local function complete()
  local now = clock(ARGV[1])
  local channel, attempt, token = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  local result, error = ARGV[5], ARGV[6]
  local retry_delay, retention = tonumber(ARGV[8]), tonumber(ARGV[9])
  local raw = redis.call('GET', KEYS[1])
  if not raw then
    return {'gone', ''}
  end
  local record = cjson.decode(raw)
  if result == 'released' then
    local reservation = ARGV[12] or ''
    local lease = record.lease
    if reservation == '' or lease == nil or lease[4] ~= reservation then
      return {'unchanged', raw}
    end
    local kept = {}
    for _, item in ipairs(record.h) do
      if item[6] ~= lease[2] then
        table.insert(kept, item)
      end
    end
    record.h = kept
    record.lease = nil
    record.n = record.n - 1
    save(KEYS[1], KEYS[2], channel, record, now)
    redis.call('PUBLISH', ARGV[10], KEYS[1])
    return {'ok', cjson.encode(record)}
  end
  local current = record.lease ~= nil and record.lease[2] == token
  local entry = find_entry(record, attempt, token)
  if entry ~= nil then
    entry[3] = result
    entry[5] = error
    entry[4] = now
  end
  if current then
    record.lease = nil
    count_known_attempts(record, tonumber(ARGV[11]) or 0, attempt)
  end
  local succeeded = result == 'succeeded'
  if succeeded and entry ~= nil and record.st ~= 'delivered' then
    -- A success always wins, even from a stale holder of an attempt of this record.
    record.st = 'delivered'
    if ARGV[7] ~= '' then
      record.rcpt = cjson.decode(ARGV[7])
    end
  elseif current and record.st == 'open' then
    record.err = error
    if result == 'failed_permanent' then
      record.st = 'failed_permanent'
    else
      record.next = now + retry_delay
      if record.n >= record.max then
        record.st = 'exhausted'
      end
    end
  elseif not current and entry == nil then
    return {'unchanged', raw}
  end
  if not record.cl then
    record.exp = math.max(record.exp, now + retention)
  end
  save(KEYS[1], KEYS[2], channel, record, now)
  redis.call('PUBLISH', ARGV[10], KEYS[1])
  return {'ok', cjson.encode(record)}
end

-- KEYS: index. ARGV: now, force ('1' or '0'), grace, record key prefix, change notification
-- channel, then the channels to clear (none: all of the uid's).
local function clear()
  local now = clock(ARGV[1])
  local force, grace, prefix = ARGV[2] == '1', tonumber(ARGV[3]), ARGV[4]
  local channels = {}
  for i = 6, #ARGV do
    table.insert(channels, ARGV[i])
  end
  if #channels == 0 then
    channels = redis.call('SMEMBERS', KEYS[1])
  end
  table.sort(channels)
  local cleared, running = {}, {}
  for _, channel in ipairs(channels) do
    local key = prefix .. channel
    local raw = redis.call('GET', key)
    if raw then
      local record = cjson.decode(raw)
      if record.exp > now then
        table.insert(cleared, channel)
        if record.lease ~= nil and record.lease[3] > now then
          table.insert(running, channel)
        end
        if force then
          redis.call('DEL', key)
          redis.call('SREM', KEYS[1], channel)
        else
          record.cl = true
          local keep = {}
          for _, entry in ipairs(record.h) do
            if entry[3] == 'running' or entry[3] == 'succeeded' or entry[3] == 'abandoned' then
              table.insert(keep, entry)
            end
          end
          record.h = keep
          -- A tombstone outlives the lease it keeps.
          local lease_end = now
          if record.lease ~= nil and record.lease[3] > now then
            lease_end = record.lease[3]
          end
          record.exp = lease_end + grace
          local ttl = math.max(1, math.ceil((record.exp - now) * 1000))
          redis.call('SET', key, cjson.encode(record), 'PX', ttl)
        end
        redis.call('PUBLISH', ARGV[5], key)
      end
    else
      redis.call('SREM', KEYS[1], channel)
    end
  end
  return {cleared, running}
end

local operation = table.remove(ARGV, 1)
if operation == 'reserve' then
  return reserve()
elseif operation == 'complete' then
  return complete()
elseif operation == 'clear' then
  return clear()
end
return redis.error_reply('unknown operation ' .. tostring(operation))
