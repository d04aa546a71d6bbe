#!lua flags=allow-oom
-- Takes the idempotency holds of entries whose handlers are about to run, one hold per entry.
-- A hold names the entry handling its event, so it passes with the entry to whichever consumer
-- owns it, never expires under a live consumer, and frees itself once that entry is no longer
-- pending. It ends as `done` (handled) or `dead` (dead-lettered), kept for the idempotency window.
-- Holds are bookkeeping of a few dozen bytes: taken even when Redis refuses writes for maxmemory.
-- KEYS[1]      the stream
-- KEYS[i+1]    the hold key of entry i
-- ARGV[1]      the consumer group
-- ARGV[2]      how long an abandoned hold lasts at most, in milliseconds (the idempotency window)
-- ARGV[2i+1]   entry i's id
-- ARGV[2i+2]   '1' when entry i is a replay of a dead letter, '0' otherwise
-- Returns, per entry, 0 when it holds its key, 1 when the event was handled already, 2 when
-- another pending entry of the same event holds the key, 3 when the event was dead-lettered.
local results = {}
for i = 2, #KEYS do
  local key = KEYS[i]
  local id = ARGV[2 * i - 1]
  local holder = redis.call('GET', key)
  local taken = false
  if holder == false or holder == id then
    taken = true
  elseif holder == 'done' then
    results[i - 1] = 1
  elseif holder == 'dead' then
    if ARGV[2 * i] == '1' then
      taken = true
    else
      results[i - 1] = 3
    end
  elseif #redis.call('XPENDING', KEYS[1], ARGV[1], holder, holder, 1) == 0 then
    -- The entry that held it was settled without marking it, or vanished: the hold is stale.
    taken = true
  else
    results[i - 1] = 2
  end
  if taken then
    if holder ~= id then
      redis.call('SET', key, id, 'PX', ARGV[2])
    end
    results[i - 1] = 0
  end
end
return results
