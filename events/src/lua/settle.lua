#!lua flags=allow-oom
-- Acknowledges handled entries and marks their idempotency holds done, in one atomic step, so a
-- crash cannot leave an entry acknowledged without its mark or marked without being acknowledged.
-- Marks are bookkeeping of a few dozen bytes: written even when Redis refuses writes for
-- maxmemory, so that a handled event is never run again.
-- KEYS[1]      the stream
-- KEYS[2..]    hold keys to mark done (may be none)
-- ARGV[1]      the consumer group
-- ARGV[2]      how long a done mark lives, in milliseconds
-- ARGV[3..]    the entry ids to acknowledge
-- Returns the number of entries acknowledged.
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], 'done', 'PX', ARGV[2])
end
if #ARGV < 3 then
  return 0
end
return redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 3))
