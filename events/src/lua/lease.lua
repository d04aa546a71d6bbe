-- Takes, renews or gives up the lease on one partition stream for one consumer of a group, and
-- remembers who read the partition for as long as a read of theirs may still be under way: so that
-- a consumer taking a partition nobody may still be reading starts reading it at once.
-- KEYS[1]  the lease key
-- KEYS[2]  the reader key: the consumer that last held the lease, kept `ARGV[4]` past its lease
-- ARGV[1]  the consumer
-- ARGV[2]  how long the lease lasts, in milliseconds
-- ARGV[3]  'take'; 'give up' (a read of the partition may still be under way); 'stop' (this
--          consumer's reading has ended)
-- ARGV[4]  how long a read lasts at most, in milliseconds
-- Returns 0 when another consumer holds the lease (or it was given up), 1 when this consumer holds
-- it, 2 when it has just taken it and no other consumer can still be reading the partition.
local holder = redis.call('GET', KEYS[1])
if ARGV[3] ~= 'take' then
  if holder == ARGV[1] then
    redis.call('DEL', KEYS[1])
    if ARGV[3] == 'stop' then
      redis.call('DEL', KEYS[2])
    end
  end
  return 0
end
local remembered = tonumber(ARGV[2]) + tonumber(ARGV[4])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[1], 'PX', remembered)
  return 1
end
if holder == false then
  local reader = redis.call('GET', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('SET', KEYS[2], ARGV[1], 'PX', remembered)
  if reader == false then
    return 2
  end
  return 1
end
return 0
