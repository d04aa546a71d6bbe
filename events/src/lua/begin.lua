
-- Takes the idempotency holds of entries whose handlers are about to run: the event's mark (see
-- above) names the entry handling it. So the hold passes with the entry to whichever consumer owns
-- it, never expires under a live consumer, and frees itself once that entry is no longer pending.
-- Holds are bookkeeping of a few dozen bytes: taken even when Redis refuses writes for maxmemory.
-- KEYS[1]      the stream
-- ARGV[1]      the consumer group
-- ARGV[2]      the prefix of the group's marks on the stream
-- ARGV[3]      the idempotency window, in milliseconds
-- ARGV[4]      marks per shard before a split
-- ARGV[5]      u, how many entries' marks are kept by when they were written (see marks.lua)
-- ARGV[6]      t, how many entries' marks are kept by time (see pages.lua)
-- ARGV[7]      a character per entry: '1' when it is a replay of a dead letter, '0' otherwise
-- ARGV[8..]    the entries' identity digests (16 bytes each): the u, then the t sorted
-- then        the entries' ids in the same order, each followed by `#<index>` for an event of a
--              packed entry
-- Returns {position, result, ...} for the entries (by position among the arguments above, from
-- 1) that do not take a new hold: 1 when the event was handled already, 2 when another pending
-- entry of the same event holds it, 3 when it was dead-lettered, 4 when the entry held it already
-- (an earlier delivery or attempt of it took the hold). The others hold theirs from now.

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
    return 4
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
local written, timed, replays = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
-- Entry i's digest is ARGV[digest_at + i], its id ARGV[id_at + i].
local digest_at, id_at = 7, 7 + written + timed
local results = {}
-- Answers that entry `i` does not hold its event, for `result`.
local function answer(i, result)
  if result ~= 0 then
    results[#results + 1] = i
    results[#results + 1] = result
  end
end
for i = 1, written do
  local digest = ARGV[digest_at + i]
  local id, replay = ARGV[id_at + i], string.sub(replays, i, i)
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
  answer(i, result)
end
-- Takes the holds of `digests` (sorted, of the entries at `positions`) in the page `key`, reading
-- its marks at once and writing the holds at once; in its overflow page for a mark it does not
-- have when it is full. An event twice in the batch (its digests side by side) is held by its
-- first entry.
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
      local i = positions[j]
      local id = ARGV[id_at + i]
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
      answer(i, result)
      previous_rest = false
    end
    previous, previous_mark = digest, mark
  end
  pages_end(key, writes, #rest > 0, function(overflow)
    hold(overflow, rest, rest_positions)
  end)
end
-- The entries `from` to `to` kept by time (by position among them), of the page `key`: as a
-- rule their events have no marks yet (none are read from a page not made yet, as most are when a
-- backlog is read) and the page has room for them all, so their holds are written at once; else
-- each is looked at as `hold` does.
local function hold_page(key, from, to)
  local first, last = digest_at + written + from, digest_at + written + to
  local size = redis.call('HLEN', key)
  local found = size > 0 and redis.call('HMGET', key, unpack(ARGV, first, last)) or {}
  local plain = size + last - first + 1 <= pages.full
  local at = first
  while plain and at <= last do
    plain = not found[at - first + 1] and (at == first or ARGV[at] ~= ARGV[at - 1])
    at = at + 1
  end
  local digests, positions, writes = {}, {}, {}
  for at = first, last do
    if plain then
      writes[#writes + 1] = ARGV[at]
      writes[#writes + 1] = ARGV[at + written + timed]
    else
      digests[#digests + 1] = ARGV[at]
      positions[#positions + 1] = at - digest_at
    end
  end
  if plain then
    pages_set(key, writes, 1, #writes)
  else
    hold(key, digests, positions)
  end
end
pages_each(timed, function(k)
  return ARGV[digest_at + written + k]
end, hold_page)
marks_flush()
pages_flush()
return results
