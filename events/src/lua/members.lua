-- Records that a consumer of a group is alive and counts the live ones.
-- KEYS[1]  the group's member set (a sorted set of consumers by last sign of life)
-- ARGV[1]  the consumer
-- ARGV[2]  now, in milliseconds
-- ARGV[3]  how long a member stays alive without a sign, in milliseconds
-- Returns the number of live members.
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('ZCARD', KEYS[1])
