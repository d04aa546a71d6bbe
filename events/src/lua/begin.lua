
-- Takes the idempotency holds of entries whose handlers are about to run: the event's mark (see
-- above) names the entry handling it. So the hold passes with the entry to whichever consumer owns
-- it, never expires under a live consumer, and frees itself once that entry is no longer pending.
-- Holds are bookkeeping of a few dozen bytes: taken even when Redis refuses writes for maxmemory.
-- KEYS[1]      the stream
-- ARGV[1]      the consumer group
-- ARGV[2]      the prefix of the group's marks on the stream
-- ARGV[3]      the idempotency window, in milliseconds
-- ARGV[4]      marks per shard before a split
-- ARGV[5]      the entries' identity digests, 16 bytes each, one after another
-- ARGV[6]      the entries' ids, each followed by `#<index>` for an event of a packed entry,
--              separated by spaces
-- ARGV[7]      a character per entry: '1' when it is a replay of a dead letter, '0' otherwise
-- (Three arguments for all the entries cost Redis less than three for each.)
-- Returns, per entry, 0 when it holds its event, 1 when the event was handled already, 2 when
-- another pending entry of the same event holds it, 3 when the event was dead-lettered.

-- What a delivery of entry `id` may do given its event's `mark`: one of the results above, or
-- false when the event is free for it (no mark, a stale hold, or a dead mark and a replay).
local function verdict(mark, id, replay)
  if mark == 'd' then
    return 1
  elseif mark == 'x' then
    if replay == '1' then
      return false
    end
    return 3
  elseif mark == id then
    return 0
  elseif mark then
    -- The holding entry's id, without the `#<index>` of an event of a packed entry.
    local holder = string.match(mark, '^[^#]*')
    if #redis.call('XPENDING', KEYS[1], ARGV[1], holder, holder, 1) > 0 then
      return 2
    end
  end
  return false
end

marks_setup(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
local digests, ids, replays = ARGV[5], ARGV[6], ARGV[7]
local results = {}
local from = 1
for i = 1, #replays do
  local digest = string.sub(digests, 16 * i - 15, 16 * i)
  local space = string.find(ids, ' ', from, true) or #ids + 1
  local id = string.sub(ids, from, space - 1)
  local replay = string.sub(replays, i, i)
  from = space + 1
  local number = marks_number(digest)
  -- A mark in an earlier bucket decides, unless it leaves the event free; then the current
  -- bucket is claimed (HSETNX), or its mark decides.
  local result = verdict(marks_find_before(digest, number), id, replay)
  if not result then
    if marks_write('HSETNX', digest, number, id) then
      result = 0
    else
      result = verdict(marks_find_current(digest, number), id, replay)
      if not result then
        marks_write('HSET', digest, number, id)
        result = 0
      end
    end
  end
  results[i] = result
end
marks_flush()
return results
