
-- Marks handled events done and acknowledges the entries whose events are all settled, in one
-- atomic step: for events of packed entries (whose entries may be delivered again for their other
-- events), and for every event once an acknowledgement failed (an entry's own hold says its event
-- was handled only once the entry is acknowledged). The marks are written first: if the
-- acknowledgement fails, a consumer that takes the entries over finds them marked and does not
-- run them again. Marks are bookkeeping of a few dozen bytes: written even when Redis refuses
-- writes for maxmemory.
-- KEYS[1]      the stream
-- ARGV[1]      the consumer group
-- ARGV[2]      the prefix of the group's marks on the stream
-- ARGV[3]      the idempotency window, in milliseconds
-- ARGV[4]      marks per shard before a split
-- ARGV[5]      n, the number of entries to acknowledge
-- ARGV[6..5+n] their ids
-- ARGV[6+n]    u, how many events to mark done have marks kept by when they were written
-- then         their identity digests (16 bytes each), one argument each
-- then         the digests of those whose marks are kept by time, sorted, each followed by 'd'
-- Returns the number of entries acknowledged.
marks_setup(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
pages_setup()
local count = tonumber(ARGV[5])
local written = tonumber(ARGV[6 + count])
for at = 7 + count, 6 + count + written do
  marks_write('HSET', ARGV[at], marks_number(ARGV[at]), 'd')
end
local timed_at = 7 + count + written
pages_write(ARGV, timed_at, (#ARGV - timed_at + 1) / 2)
marks_flush()
pages_flush()
if count == 0 then
  return 0
end
return redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 6, 5 + count))