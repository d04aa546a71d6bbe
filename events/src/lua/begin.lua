
-- Takes the idempotency holds of entries whose handlers are about to run: the event's mark (see
-- above) names the entry handling it. So the hold passes with the entry to whichever consumer owns
-- it, never expires under a live consumer, and frees itself once that entry is no longer pending.
-- Holds are bookkeeping of a few dozen bytes: taken even when Redis refuses writes for maxmemory.
-- KEYS[1]      the stream
-- ARGV[1]      the consumer group
-- ARGV[2]      the prefix of the group's marks on the stream
-- ARGV[3]      the idempotency window, in milliseconds
-- ARGV[4]      marks per shard before a split
-- ARGV[5]      the identity digests, 16 bytes each, one after another, of the entries whose
--              marks are kept by when they were written (see marks.lua)
-- ARGV[6]      those of the entries whose marks are kept by time (see pages.lua), sorted
-- ARGV[7]      the entries' ids, in the order of their digests, each followed by `#<index>` for
--              an event of a packed entry, separated by spaces
-- ARGV[8]      a character per entry: '1' when it is a replay of a dead letter, '0' otherwise
-- (A few arguments for all the entries cost Redis less than three for each.)
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
pages_setup()
local written, timed, replays = ARGV[5], ARGV[6], ARGV[8]
local ids = {}
for id in string.gmatch(ARGV[7], '[^ ]+') do
  ids[#ids + 1] = id
end
local results = {}
for i = 1, #written / 16 do
  local digest = string.sub(written, 16 * i - 15, 16 * i)
  local id, replay = ids[i], string.sub(replays, i, i)
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
-- Takes the holds of `digests` (sorted, at `positions` among the entries kept by time) in the
-- page `key`, reading its marks at once and writing the holds at once; in its overflow page for a
-- mark it does not have when it is full. An event twice in the batch (its digests side by side) is
-- held by its first entry.
local before = #written / 16
local function hold(key, digests, positions)
  local found = redis.call('HMGET', key, unpack(digests))
  local room = pages.full - redis.call('HLEN', key)
  local writes, rest, rest_positions = {}, {}, {}
  local previous, previous_mark, previous_rest
  for j, digest in ipairs(digests) do
    local mark = found[j]
    if digest == previous then
      mark = previous_mark
    end
    if not mark and (room <= 0 or (digest == previous and previous_rest)) then
      rest[#rest + 1] = digest
      rest_positions[#rest_positions + 1] = positions[j]
      previous_rest = true
    else
      local i = before + positions[j]
      local id = ids[i]
      local result = mark and verdict(mark, id, string.sub(replays, i, i))
      if not result then
        writes[#writes + 1] = digest
        writes[#writes + 1] = id
        if not mark then
          room = room - 1
        end
        mark = id
        result = 0
      end
      results[i] = result
      previous_rest = false
    end
    previous, previous_mark = digest, mark
  end
  pages_end(key, writes, #rest > 0, function(overflow)
    hold(overflow, rest, rest_positions)
  end)
end
pages_each(timed, hold)
marks_flush()
pages_flush()
return results
