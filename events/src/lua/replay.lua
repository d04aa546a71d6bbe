-- Ends the replay of a dead letter: runs in one transaction right after the XADD of its original
-- fields to the stream (so that an entry of any size can be replayed: its fields never pass
-- through Lua). Deletes the dead letter if it is still there; otherwise another replay or a purge
-- took it first, and the entry just added to the stream is deleted again. So a dead letter is
-- neither lost nor doubled.
-- KEYS[1]  the stream
-- KEYS[2]  the dead-letter stream
-- ARGV[1]  the dead letter's id
-- Returns 1 when it was replayed, 0 when it was not there (any more).
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then
  return redis.error_reply('the key ' .. KEYS[1] .. ' is not a stream')
end
if redis.call('XDEL', KEYS[2], ARGV[1]) == 1 then
  return 1
end
local added = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
redis.call('XDEL', KEYS[1], added[1][1])
return 0
