-- Takes the idempotency keys of entries before their handlers run, one key per delivery.
-- KEYS[i]    the idempotency key of delivery i
-- ARGV[1]    how long a hold lasts if its consumer dies, in milliseconds
-- ARGV[i+1]  delivery i's token (consumer and entry id)
-- Returns, per delivery, 0 when it holds its key, 1 when the event was already handled, 2 when
-- another delivery of the same event holds the key right now.
local results = {}
for i, key in ipairs(KEYS) do
  local token = ARGV[i + 1]
  if redis.call('SET', key, token, 'NX', 'PX', ARGV[1]) then
    results[i] = 0
  else
    local holder = redis.call('GET', key)
    if holder == 'done' then
      results[i] = 1
    elseif holder == token then
      redis.call('PEXPIRE', key, ARGV[1])
      results[i] = 0
    else
      results[i] = 2
    end
  end
end
return results
