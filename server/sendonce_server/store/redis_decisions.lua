-- The decisions of engine/decisions.py, ported to run atomically inside Redis.
-- The store contract tests run the same cases against this script and the Python original.
--
-- Records are JSON strings in the codec's format (store/codec.py). Keys of a notification share
-- the hash tag {uid}, so a Redis Cluster keeps them in one slot:
--   <prefix>{uid}:r:<channel>  the record       <prefix>{uid}:f:<channel>  its fencing counter
--   <prefix>{uid}:i            the set of the uid's channels
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
-- lease_seconds, retention, blocked ('1' when the circuit breaker refuses a new attempt).
local function reserve()
  local now = clock(ARGV[1])
  local channel, fingerprint = ARGV[2], ARGV[3]
  local max_attempts, persisted = tonumber(ARGV[4]), tonumber(ARGV[5])
  local lease_seconds, retention = tonumber(ARGV[6]), tonumber(ARGV[7])
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
  if reap_expired_lease(record, now) then
    changed = true
  end
  if record.lease ~= nil then
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
  redis.call('EXPIRE', KEYS[2], math.ceil(retention))
  record.lease = {record.n, token, now + lease_seconds}
  table.insert(record.h, {record.n, now, 'running', cjson.null, '', token})
  record.cl = false
  record.exp = math.max(record.exp, now + retention)
  save(KEYS[1], KEYS[3], channel, record, now)
  return {'reserved', cjson.encode(record)}
end

-- KEYS: record, index. ARGV: now, channel, attempt, token, result, error, receipt JSON or '',
-- retry_delay, retention, change notification channel.
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
  local entry = find_entry(record, attempt, token)
  if entry ~= nil then
    entry[3] = result
    entry[5] = error
    entry[4] = now
  end
  local current = record.lease ~= nil and record.lease[2] == token
  if current then
    record.lease = nil
  end
  local succeeded = result == 'succeeded'
  if succeeded and record.st ~= 'delivered' then
    -- A success always wins, even from a stale holder.
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
  elseif not current and entry == nil and not succeeded then
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
            if entry[3] == 'running' or entry[3] == 'succeeded' then
              table.insert(keep, entry)
            end
          end
          record.h = keep
          record.exp = now + grace
          redis.call('SET', key, cjson.encode(record), 'PX', math.max(1, math.ceil(grace * 1000)))
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
