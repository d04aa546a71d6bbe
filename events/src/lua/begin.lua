
-- Takes the idempotency holds of entries whose handlers are about to run, one hold per entry.
-- A hold names the entry handling its event, so it passes with the entry to whichever consumer
-- owns it, never expires under a live consumer, and frees itself once that entry is no longer
-- pending. The event's mark (see above) says whether it was handled or dead-lettered already.
-- Holds are bookkeeping of a few dozen bytes: taken even when Redis refuses writes for maxmemory.
-- KEYS[1]      the stream
-- KEYS[i+1]    the hold key of entry i
-- ARGV[1]      the consumer group
-- ARGV[2]      the prefix of the group's marks on the stream
-- ARGV[3]      the idempotency window, in milliseconds (an abandoned hold lasts that long)
-- ARGV[4]      marks per shard before a split
-- ARGV[3i+2]   entry i's identity digest (16 bytes)
-- ARGV[3i+3]   entry i's id
-- ARGV[3i+4]   '1' when entry i is a replay of a dead letter, '0' otherwise
-- Returns, per entry, 0 when it holds its event, 1 when the event was handled already, 2 when
-- another pending entry of the same event holds it, 3 when the event was dead-lettered.
marks_setup(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
local results = {}
for i = 1, #KEYS - 1 do
  local key = KEYS[i + 1]
  local digest, id, replay = ARGV[3 * i + 2], ARGV[3 * i + 3], ARGV[3 * i + 4]
  local mark = marks_find(digest)
  if mark == 'd' then
    results[i] = 1
  elseif mark == 'x' and replay ~= '1' then
    results[i] = 3
  else
    local holder = redis.call('GET', key)
    if holder == false or holder == id
      or #redis.call('XPENDING', KEYS[1], ARGV[1], holder, holder, 1) == 0 then
      -- Free, this entry's already, or stale: the entry that held it was settled without a
      -- mark, or vanished.
      if holder ~= id then
        redis.call('SET', key, id, 'PX', ARGV[3])
      end
      results[i] = 0
    else
      results[i] = 2
    end
  end
end
return results
