-- Lets go of an idempotency key after a failed attempt, if this delivery still holds it.
-- KEYS[1]  the idempotency key
-- ARGV[1]  this delivery's token
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
