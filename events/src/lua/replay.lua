-- Moves a dead letter back to its stream: adds its original fields there as a new entry and
-- deletes it from the dead-letter stream, in one atomic step, so it is neither lost nor doubled.
-- KEYS[1]    the stream
-- KEYS[2]    the dead-letter stream
-- ARGV[1]    the dead letter's id
-- ARGV[2..]  the fields and values of the new entry
-- Returns the new entry's id, or false when the dead letter is not there (any more).
if #redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1]) == 0 then
  return false
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('XDEL', KEYS[2], ARGV[1])
return id
