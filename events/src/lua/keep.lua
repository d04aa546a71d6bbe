-- Keeps entries this consumer is working on its own: sets their idle time (to 0, so no reclaim
-- takes them while it lives; to the claim time when it hands them over as it stops) and records
-- their delivery count (XCLAIM .. IDLE .. JUSTID RETRYCOUNT), without taking back one that another
-- consumer has claimed meanwhile.
-- KEYS[1]      the stream
-- ARGV[1]      the consumer group
-- ARGV[2]      this consumer
-- ARGV[3]      the idle time to set, in milliseconds
-- ARGV[2i+2]   entry i's id
-- ARGV[2i+3]   entry i's delivery count
-- Returns the ids that are no longer pending on this consumer.
local lost = {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if pending[1] ~= nil and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', ARGV[3], 'JUSTID', 'RETRYCOUNT',
      ARGV[i + 1])
  else
    lost[#lost + 1] = id
  end
end
return lost
