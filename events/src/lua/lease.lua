-- Takes, renews or gives up the lease on one partition stream for one consumer of a group.
-- KEYS[1]  the lease key
-- ARGV[1]  the consumer
-- ARGV[2]  how long the lease lasts, in milliseconds
-- ARGV[3]  'take' or 'release'
-- Returns 1 when the consumer holds the lease afterwards, 0 otherwise.
local holder = redis.call('GET', KEYS[1])
if ARGV[3] == 'release' then
  if holder == ARGV[1] then
    redis.call('DEL', KEYS[1])
  end
  return 0
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
