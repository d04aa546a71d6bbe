-- Claims entries that have stayed idle past the claim time on other consumers (XCLAIM, which
-- checks the idle time again atomically and counts a delivery).
-- KEYS[1]    the stream
-- ARGV[1]    the consumer group
-- ARGV[2]    this consumer
-- ARGV[3]    the least idle time, in milliseconds
-- ARGV[4..]  the entry ids
-- Returns {claimed, cleaned}: claimed is a list of {id, delivery count, fields}; cleaned counts
-- the ids whose entries had been deleted (XCLAIM drops them from the pending list).
local claimed = {}
local cleaned = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local entry = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], id)[1]
  if entry then
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    claimed[#claimed + 1] = {id, pending[1][4], entry[2]}
  elseif #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1) == 0 then
    cleaned = cleaned + 1
  end
end
return {claimed, cleaned}
