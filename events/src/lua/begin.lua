
-- Takes the idempotency holds of entries whose handlers are about to run: the event's mark (see
-- above) names the entry handling it. So the hold passes with the entry to whichever consumer owns
-- it and never expires under a live consumer; once that entry is acknowledged, the same mark says
-- the event was handled, with no write. Holds are bookkeeping of a few dozen bytes: taken even
-- when Redis refuses writes for maxmemory.
-- KEYS[1]      the stream
-- ARGV[1]      the consumer group
-- ARGV[2]      the prefix of the group's marks on the stream
-- ARGV[3]      the idempotency window, in milliseconds
-- ARGV[4]      marks per shard before a split
-- ARGV[5]      u, how many entries' marks are kept by when they were written (see marks.lua)
-- ARGV[6]      t, how many entries' marks are kept by time (see pages.lua) in fields of their own
-- ARGV[7]      a character per entry: '1' when it is a replay of a dead letter, '0' otherwise
-- ARGV[8..]    the u entries' identity digests (16 bytes each), then each one's holder: the entry
--              as marks name it (see `marks_holder`)
-- then         the t entries, sorted by digest: each one's digest, then its holder
-- then         the soonest and the latest id order of the entries below (12 bytes each, see
--              `Digest::id_order`), or empty when there are none
-- last         the other entries kept by time, sorted by digest, as page records (see pages.lua),
--              side by side: each event asked for once in the call
-- Returns {position, result, ...} for the entries (by position among the arguments above, from
-- 1) that do not take a new hold: 1 when the event was handled already, 2 when another pending
-- entry of the same event holds it, 3 when it was dead-lettered, 4 when the entry held it already
-- (an earlier delivery or attempt of it took the hold). The others hold theirs from now.

-- What a delivery of entry `id` (as marks name it) may do given its event's `mark` (of an event
-- kept by time whose time is `base`): one of the results above, or false when the event is free
-- for it (no mark, a hold given up, or a dead mark and a replay). A hold whose entry is no longer
-- pending was handled: every other end of an entry that took a hold marks it dead or gives it up.
local function verdict(mark, id, replay, base)
  if mark == 'f' then
    return false
  elseif mark == 'd' then
    return 1
  elseif mark == 'x' then
    if replay == '1' then
      return false
    end
    return 3
  elseif mark == id then
    return 4
  elseif mark then
    local holder = marks_holder(mark, base)
    if #redis.call('XPENDING', KEYS[1], ARGV[1], holder, holder, 1) > 0 then
      return 2
    end
    return 1
  end
  return false
end

marks_setup(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
pages_setup()
pages_asking(ARGV[#ARGV - 1])
local written, timed, replays = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
-- The argument before the entries kept by time: the kth is ARGV[pairs_at + 2k - 1], its holder
-- the next.
local pairs_at = 7 + 2 * written
local asked = ARGV[#ARGV]
-- Where the kth record asked for starts in `asked`.
local function asked_at(k)
  return (k - 1) * PAGES_RECORD + 1
end
-- The digest and the holder of the ith entry, of all.
local function entry(i)
  if i <= written then
    return ARGV[7 + i], ARGV[7 + written + i]
  elseif i <= written + timed then
    local at = pairs_at + 2 * (i - written)
    return ARGV[at - 1], ARGV[at]
  end
  local at = asked_at(i - written - timed)
  return pages_record_digest(asked, at), pages_record_holder(asked, at)
end
local results = {}
-- Answers that entry `i` does not hold its event, for `result`.
local function answer(i, result)
  if result ~= 0 then
    results[#results + 1] = i
    results[#results + 1] = result
  end
end
for i = 1, written do
  local digest, id = entry(i)
  local replay = string.sub(replays, i, i)
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
-- have when it is full; by the page's `records` (see `pages_records`) for a mark in none. An
-- event twice in the batch (its digests side by side) is held by its first entry.
local function hold(key, digests, positions, records)
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
      mark = mark or pages_record_mark(records, pages_record_key(digest), 1)
      local i = positions[j]
      local _, id = entry(i)
      local result = mark and verdict(mark, id, string.sub(replays, i, i), (pages_millis(digest)))
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
    hold(overflow, rest, rest_positions, records)
  end)
end
-- The entries `from` to `to` kept by time (by position among them), of the page `key`: as a
-- rule their events have no marks yet (none are read from a page not made yet, as most are when
-- a backlog is read) and the page has room for them all, so their holds are written at once,
-- straight from the arguments; else each is looked at as `hold` does.
local function hold_page(key, from, to)
  local first, last = pairs_at + 2 * from - 1, pairs_at + 2 * to
  -- Their digests, and their positions among all entries.
  local function gathered()
    local digests, positions = {}, {}
    for k = from, to do
      digests[k - from + 1] = ARGV[pairs_at + 2 * k - 1]
      positions[k - from + 1] = written + k
    end
    return digests, positions
  end
  local size = redis.call('HLEN', key)
  local records = pages_records(key)
  local found = size > 0 and redis.call('HMGET', key, unpack((gathered()))) or {}
  local plain = size + to - from + 1 <= pages.full
  local at = first
  while plain and at < last do
    plain = not found[(at - first) / 2 + 1]
      and not pages_record_mark(records, pages_record_key(ARGV[at]), 1)
      and (at == first or ARGV[at] ~= ARGV[at - 2])
    at = at + 2
  end
  if plain then
    pages_set(key, ARGV, first, last)
  else
    local digests, positions = gathered()
    hold(key, digests, positions, records)
  end
end
-- The records asked for, from the `from`th to the `to`th, of the page `key`: as a rule the page has
-- no marks in its hash and none of their events has a record in it, and they are appended to its
-- records as they came; else each is looked at as `hold` does (which follows the hash's overflow
-- pages). Their records are looked for in the page's only when some may be there.
local function hold_records(key, from, to)
  local function added()
    return string.sub(asked, asked_at(from), asked_at(to + 1) - 1), to - from + 1
  end
  local marked = redis.call('HLEN', key) > 0
  if not marked and pages_none_held() then
    local added_records, count = added()
    local last_key, last = pages_records_end(key)
    return pages_record(last_key, added_records, count, last)
  end
  local records = pages_records(key)
  if not marked and records[1] ~= '' then
    for k = from, to do
      if pages_record_mark(records, asked, asked_at(k)) then
        marked = true
        break
      end
    end
  end
  if marked then
    local digests, positions = {}, {}
    for k = from, to do
      digests[k - from + 1] = pages_record_digest(asked, asked_at(k))
      positions[k - from + 1] = written + timed + k
    end
    return hold(key, digests, positions, records)
  end
  local added_records, count = added()
  pages_record(pages_keep_full(key, #records - 1), added_records, count, records[#records])
end
pages_each(timed, function(k)
  return pages_millis(ARGV[pairs_at + 2 * k - 1])
end, hold_page)
-- A record's time is in its digest's first eight bytes, after its key's (see pages.lua).
pages_each(#asked / PAGES_RECORD, function(k)
  return pages_millis(asked, asked_at(k) + 8)
end, hold_records)
marks_flush()
pages_flush()
return results
