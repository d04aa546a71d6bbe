-- Keeps entries this consumer is working on its own: resets their idle time, so no reclaim takes
-- them while it lives, and records their delivery count (XCLAIM .. JUSTID RETRYCOUNT), without
-- taking back one that another consumer has claimed meanwhile.
-- KEYS[1]      the stream
-- ARGV[1]      the consumer group
-- ARGV[2]      this consumer
-- ARGV[2i+1]   entry i's id
-- ARGV[2i+2]   entry i's delivery count
-- Returns the ids that are no longer pending on this consumer.
local lost = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if pending[1] ~= nil and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID', 'RETRYCOUNT', ARGV[i + 1])
  else
    lost[#lost + 1] = id
  end
end
return lost
