-- Takes the idempotency key of an entry before its handler runs.
-- KEYS[1]  the idempotency key
-- ARGV[1]  this delivery's token (consumer and entry id)
-- ARGV[2]  how long the hold lasts if the consumer dies, in milliseconds
-- Returns 0 when this delivery holds the key, 1 when the event was already handled, 2 when another
-- delivery of the same event holds it right now.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 0
end
local holder = redis.call('GET', KEYS[1])
if holder == 'done' then
  return 1
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
return 2
