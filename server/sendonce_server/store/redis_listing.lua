-- The index of ListDeliveries (engine/listing.py), apart from the decisions' script: called by
-- the store after a script call changed a record. One sorted set per state, member
-- "<channel>\n<uid>", score the record's updated_at. Every set shares one hash tag, so this
-- script touches one slot of a Redis Cluster (the records' slots are the uids').
--
-- KEYS: the sets of the states, in engine/listing.py's order.
-- ARGV: member; the number of the set to file it in ('0': in none, e.g. cleared); its score;
-- the score below which a set's entries are dropped (records that old have expired); the
-- sets' time to live in ms ('' with ARGV[2] '0'); 'force' to file even behind a newer score.
local member, target, score = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[6] ~= 'force' then
  for _, key in ipairs(KEYS) do
    local current = redis.call('ZSCORE', key, member)
    if current and tonumber(current) > score then
      return 0 -- a later write of the record was filed first: it wins
    end
  end
end
for i, key in ipairs(KEYS) do
  if i == target then
    redis.call('ZADD', key, score, member)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[4])
    redis.call('PEXPIRE', key, ARGV[5])
  else
    redis.call('ZREM', key, member)
  end
end
return 1
