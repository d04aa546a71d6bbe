
-- Acknowledges handled entries and marks their events done, in one atomic step, so a crash
-- cannot leave an entry acknowledged without its mark or marked without being acknowledged. The
-- marks are written first: if the acknowledgement fails, a consumer that takes the entries over
-- finds them marked and does not run them again. Marks are bookkeeping of a few dozen bytes:
-- written even when Redis refuses writes for maxmemory.
-- KEYS[1]      the stream
-- ARGV[1]      the consumer group
-- ARGV[2]      the prefix of the group's marks on the stream
-- ARGV[3]      the idempotency window, in milliseconds
-- ARGV[4]      marks per shard before a split
-- ARGV[5]      n, the number of entries to acknowledge
-- ARGV[6..5+n] their ids
-- ARGV[6+n]    the identity digests of the events to mark done whose marks are kept by when they
--              were written, 16 bytes each, one after another
-- ARGV[7+n]    those whose marks are kept by time, sorted
-- Returns the number of entries acknowledged.
marks_setup(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
pages_setup()
local count = tonumber(ARGV[5])
local written = ARGV[6 + count]
for at = 1, #written, 16 do
  local digest = string.sub(written, at, at + 15)
  marks_write('HSET', digest, marks_number(digest), 'd')
end
pages_write(ARGV[7 + count], 'd')
marks_flush()
pages_flush()
if count == 0 then
  return 0
end
return redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 6, 5 + count))