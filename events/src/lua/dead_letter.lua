
-- Ends a dead-letter move: runs in one transaction right after the XADD of the dead-letter entry
-- (so that an entry of any size can be moved: its fields never pass through Lua). If the entry is
-- still pending on this consumer, acknowledges it (unless other events of a packed entry are still
-- unsettled) and marks its event dead; otherwise another
-- consumer has it, and the dead-letter entry just added is deleted again. So an entry is
-- dead-lettered at most once, and never one that another consumer handled. (When the XADD failed,
-- the dead-letter key is not a stream: nothing is acknowledged then.)
-- KEYS[1]  the stream
-- KEYS[2]  the dead-letter stream
-- ARGV[1]  the consumer group
-- ARGV[2]  this consumer
-- ARGV[3]  the entry id
-- ARGV[4]  the prefix of the group's marks on the stream
-- ARGV[5]  the idempotency window, in milliseconds
-- ARGV[6]  marks per shard before a split
-- ARGV[7]  '1' to acknowledge the entry, '0' to leave it pending for its other events
-- ARGV[8]   when the entry took holds on its event: 'x' to mark them dead, or 'f' to give them up
--           (no handler saw the event)
-- ARGV[9..] then for each: the event's identity digest, then '1' when its marks are kept by
--           time, '0' when by when they were written
-- Returns 1 when the entry was moved, 0 when it was not this consumer's any more.
if redis.call('TYPE', KEYS[2]).ok ~= 'stream' then
  return redis.error_reply('the dead-letter key ' .. KEYS[2] .. ' is not a stream')
end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if pending[1] == nil or pending[1][2] ~= ARGV[2] then
  local added = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  redis.call('XDEL', KEYS[2], added[1][1])
  return 0
end
if ARGV[7] == '1' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
end
if ARGV[8] then
  marks_setup(ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]))
  pages_setup()
  for at = 9, #ARGV, 2 do
    if ARGV[at + 1] == '1' then
      pages_write({ARGV[at], ARGV[8]}, 1, 1)
    else
      marks_write('HSET', ARGV[at], marks_number(ARGV[at]), ARGV[8])
    end
  end
  marks_flush()
  pages_flush()
end
return 1
