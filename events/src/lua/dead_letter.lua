-- Moves an entry to the dead-letter stream: adds it there, acknowledges it in its group, and lets go
-- of its idempotency key, in one atomic step, so it is never both lost and acknowledged.
-- KEYS[1]    the stream
-- KEYS[2]    the dead-letter stream
-- KEYS[3]    the idempotency key (optional)
-- ARGV[1]    the consumer group
-- ARGV[2]    the entry id
-- ARGV[3]    this delivery's token
-- ARGV[4]    MAXLEN of the dead-letter stream, 0 for none
-- ARGV[5..]  the dead-letter entry's fields and values
local id
if tonumber(ARGV[4]) > 0 then
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
else
  id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if KEYS[3] and redis.call('GET', KEYS[3]) == ARGV[3] then
  redis.call('DEL', KEYS[3])
end
return id
