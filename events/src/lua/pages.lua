-- Idempotency marks of events whose identity carries their time (event ids that are UUIDv7s): the
-- digest's first six bytes are the event's time in milliseconds. Such marks are kept by event time
-- in pages, so the events of a batch, which are close in time, share a few pages, each read with
-- one HMGET and written with one HSET, where marks spread by digest cost a call each.
--
-- Time is cut in books of a minute. A book's meta hash holds its `span` (milliseconds per page),
-- its `bits` (how many top bits of the digest's seventh byte split a page of one millisecond
-- further) and a `count` of its marks. They are fixed when the book is made, for the highest rate
-- of the previous book, of the book's events at hand and of the stream's entries around them, so
-- that a page holds about `per_page` marks: every consumer then finds a mark in the same page. Its
-- hash holds up to `full` (within the listpack limit) and goes on in overflow pages (`<page>+`,
-- `<page>++`, ...), as its strings of records do. A page expires a window after its last
-- millisecond, or after its last write if that is later: a mark is found for at least the window
-- and, for an event handled as it comes, at most half as long again.
--
-- Scripts take the digests sorted, so that a page's are side by side: each page's are read and
-- written at once (most holds as one string of records, see `pages_records`), and where a page's
-- run ends is found by bisection, with no work in Lua per event.
--
-- Prepended to the scripts that use it, after marks.lua; call `marks_setup` and `pages_setup`
-- first and `pages_flush` last.
local pages = {}
local PAGES_BOOK = 60000

-- This call's settings, from `marks_setup`'s (of the stream KEYS[1]). A page's hash and each of
-- its strings of records hold up to four times the marks of a shard; a page is cut for twice that
-- many events, most of them held by records. Larger pages cost a call fewer of them per batch
-- (each is read, found by bisection and written on its own), and a batch's events that land in a
-- page written before are each looked for in its records: the script cost Redis 1.5-1.6 µs per
-- event in the consume bench with pages cut for twice the marks of a shard (12 pages a call),
-- 1.1-1.4 µs for 8 times (4.5 pages), 1.2 µs for 16 times.
local function pages_setup()
  pages.prefix = marks.prefix .. ':p'
  pages.window = marks.window
  pages.per_page = 8 * marks.load
  pages.full = 4 * marks.load
  pages.books = {}
  pages.added = {}
  pages.recorded = {}
end

-- The number in the six bytes from `at` in `bytes`, big-endian (exact in a Lua number).
local function pages_number(bytes, at)
  local a, b, c, d, e, f = string.byte(bytes, at, at + 5)
  return ((((a * 256 + b) * 256 + c) * 256 + d) * 256 + e) * 256 + f
end

-- Whether the id order `a` comes before `b`: the first twelve bytes of UUIDv7 event ids, their
-- time and then where their generator put them among its millisecond's (see `Digest::id_order`).
-- Compared as numbers: Redis compares strings by its locale.
local function pages_sooner(a, b)
  local a_time, b_time = pages_number(a, 1), pages_number(b, 1)
  return a_time < b_time or (a_time == b_time and pages_number(a, 7) < pages_number(b, 7))
end

-- This call's records asked for (see begin.lua) come in the id orders `range`: the soonest, then
-- the latest, 12 bytes each; empty when there are none.
local function pages_asking(range)
  if #range == 24 then
    pages.soonest, pages.latest = string.sub(range, 1, 12), string.sub(range, 13, 24)
  end
end

-- The time in the digest that starts at `at` in `bytes` (1 when omitted), in milliseconds since
-- the epoch, and its seventh byte. Read in place: Lua hashes every byte of each string it makes,
-- a digest cut out of a longer string included.
local function pages_millis(bytes, at)
  at = at or 1
  return pages_number(bytes, at), string.byte(bytes, at + 6)
end

-- The rate of the marks of `book` among the `count` sorted digests whose times `time(k)` gives
-- (as `pages_millis` does), from the `at`th on, in marks per millisecond; as if a page's worth
-- came a second when there is one.
local function pages_rate(book, count, time, at)
  local first = time(at)
  local last, count_of_book = first, 0
  for next = at, count do
    local millis = time(next)
    if math.floor(millis / PAGES_BOOK) ~= book then
      break
    end
    last, count_of_book = millis, count_of_book + 1
  end
  if count_of_book < 2 then
    return pages.per_page / 1000
  end
  return count_of_book / math.max(last - first, 1)
end

-- The rate the stream took entries at from `millis` on (an entry's id starts with when it was
-- added), in entries per millisecond, up to 1,000: the rate of the events of that time, when they
-- were published as they happened. From at most 10 entries over 100 milliseconds, and when those
-- came within a few milliseconds, from how many the last of their milliseconds took (the
-- sequence in the id of its last entry counts those before it): Lua gets the entries' fields
-- too, and a copy of 1,000 entries of 10 kB into Lua cost Redis 37 ms.
local function pages_stream_rate(millis)
  local from = string.format('%d', millis)
  local entries = redis.call('XRANGE', KEYS[1], from, string.format('%d', millis + 99), 'COUNT', 10)
  if #entries < 10 then
    return #entries / 100
  end
  local last = string.match(entries[#entries][1], '^%d+')
  local final = redis.call('XREVRANGE', KEYS[1], last .. '-18446744073709551615', last, 'COUNT', 1)
  local taken = tonumber(string.match(final[1][1], '%d+$')) + 1
  return math.max(#entries / (tonumber(last) - millis + 1), math.min(taken, 1000))
end

-- The {span, bits} of `book`, made now if it has none, for the highest of the rates of the
-- previous book, of the book's digests at hand from the `at`th of the `count` whose times
-- `time(k)` gives, and of the stream around the first of them. Pages split a millisecond (bits
-- above 0) only when a page holds no more than one (span 1): so the digests of a page are side by
-- side when sorted. With them, as `held`, the id orders its records lie within (see
-- `pages_none_held`): '' while it has none, false when unknown (a book made before they were kept).
local function pages_book(book, count, time, at)
  local params = pages.books[book]
  if params then
    return params
  end
  local meta = pages.prefix .. string.format('%d', book)
  local values = redis.call('HMGET', meta, 'span', 'bits', 'held')
  if values[1] then
    params = {tonumber(values[1]), tonumber(values[2]), held = values[3] or false}
  else
    local rate = pages_rate(book, count, time, at)
    rate = math.max(rate, pages_stream_rate((time(at))))
    local before = redis.call('HGET', pages.prefix .. string.format('%d', book - 1), 'count')
    if before then
      rate = math.max(rate, tonumber(before) / PAGES_BOOK)
    end
    local span, bits = math.floor(pages.per_page / rate), 0
    span = math.max(1, math.min(span, math.floor(pages.window / 2), PAGES_BOOK))
    while rate / 2 ^ bits > pages.per_page and bits < 8 do
      bits = bits + 1
    end
    params = {span, bits, held = ''}
    redis.call('HSET', meta, 'span', span, 'bits', bits, 'count', 0, 'held', '')
  end
  pages.books[book] = params
  return params
end

-- The page of the `at`th of the `count` digests whose times `time(k)` gives: its book and
-- number, the last millisecond it covers, and the most seventh byte of its digests.
local function pages_page(count, time, at)
  local millis, byte = time(at)
  local book = math.floor(millis / PAGES_BOOK)
  local params = pages_book(book, count, time, at)
  local slot = math.floor((millis - book * PAGES_BOOK) / params[1])
  local first = book * PAGES_BOOK + slot * params[1]
  -- The top bits of the seventh byte: a page's digests are side by side when sorted.
  local width = 2 ^ (8 - params[2])
  local part = math.floor(byte / width)
  local page = slot * 2 ^ params[2] + part
  -- A book's last page ends with the book.
  local last = math.min(first + params[1], (book + 1) * PAGES_BOOK) - 1
  return book, page, last, (part + 1) * width - 1
end

-- When the current run's page expires: a window after the page's last millisecond or after now,
-- whichever is later.
local function pages_expiry()
  return string.format('%d', math.max(pages.last, marks.millis) + pages.window)
end

-- Makes the page `key` of the current run expire (`pages_expiry`).
local function pages_expire(key)
  redis.call('PEXPIREAT', key, pages_expiry())
end

-- Most holds are written as a page's records rather than as fields of its hash: records of
-- PAGES_RECORD bytes, the record's key (see `pages_record_key`) and then the holder's number plus
-- 2^49 in eight bytes, big-endian (see `page_record` in consumer/part.rs), side by side in the
-- string `<page>:r` and, past `pages.full` records, in its overflow strings `<page>+:r`,
-- `<page>++:r`, ... A batch's new holds are one argument, appended with one `SET` and no work per
-- event, where hash fields cost an argument each and a scan of the listpack each. A mark in the page's hash (or its overflow
-- pages) says more than a record of the same digest: the marks written after a hold (done, dead,
-- given up) and the holds that find a mark are written there.
local PAGES_RECORD = 24

-- The records of the page `key`: the strings of the page's records, each but the last full.
local function pages_records(key)
  local chain = {}
  repeat
    local records = redis.call('GET', key .. ':r') or ''
    chain[#chain + 1] = records
    key = key .. '+'
  until #records < pages.full * PAGES_RECORD
  return chain
end

-- Keeps the first `full` strings of records of the page `key` of the current run as long as the
-- page; returns the key of the page whose string of records comes next.
local function pages_keep_full(key, full)
  for _ = 1, full do
    redis.call('PEXPIREAT', key .. ':r', pages_expiry())
    key = key .. '+'
  end
  return key
end

-- The end of the records of the page `key` of the current run, read without its full strings:
-- the key of the page whose string of records is the last, and that string ('' for a new one).
-- Redis's copies of a page's strings into Lua cost it about as much as the rest of a call that
-- needs no look-up in them (2.8 strings of up to 3 kB a call in the consume bench). The strings
-- are kept as long as the page as they are walked: PEXPIREAT tells which exist, and is a command
-- the consumers' users have (see the README's ACL).
local function pages_records_end(key)
  local last
  while redis.call('PEXPIREAT', key .. ':r', pages_expiry()) == 1 do
    last = key
    key = key .. '+'
  end
  local records = last and redis.call('GET', last .. ':r')
  if not records or #records >= pages.full * PAGES_RECORD then
    return key, ''
  end
  return last, records
end

-- The key of the record of `digest`: its last eight bytes, which are mixed, then its first, the
-- event's time. A page's records share their times: a search for keys that began with them would
-- stop at every record.
local function pages_record_key(digest)
  return string.sub(digest, 9) .. string.sub(digest, 1, 8)
end

-- The digest of the record at `at` in `records`.
local function pages_record_digest(records, at)
  return string.sub(records, at + 8, at + 15) .. string.sub(records, at, at + 7)
end

-- The holder of the record at `at` in `records`, as marks name it (see `marks_holder`).
local function pages_record_holder(records, at)
  local number = 0
  for _, byte in ipairs({string.byte(records, at + 16, at + PAGES_RECORD - 1)}) do
    number = number * 256 + byte
  end
  return string.format('%d', number - 2 ^ 49)
end

-- The mark the record whose key is `key` in a page's `chain` of records holds (see
-- `pages_records`), or nil when it has none, looked for string by string: a match counts only at
-- the start of a record.
local function pages_record_scan(chain, key)
  for _, records in ipairs(chain) do
    local at = string.find(records, key, 1, true)
    while at and (at - 1) % PAGES_RECORD ~= 0 do
      at = string.find(records, key, at + 1, true)
    end
    if at then
      return pages_record_holder(records, at)
    end
  end
end

-- A record's place in the index of a page's chain of records (see `pages_record_mark`): its
-- string's position in the chain times PAGES_PLACES, plus its own in the string.
local PAGES_PLACES = 65536

-- The mark the record whose key is the 16 bytes from `at` in `bytes` holds in a page's `chain`
-- of records (see `pages_records`), or nil when it has none. A chain of one string is searched;
-- a longer one through an index of its records by their keys, made at its first look. Events
-- published in bursts (`publish_many`, a batched publisher) fill pages past one string, and a
-- batch's events that land in a page an earlier batch wrote are each looked for there: a search
-- of every string for each costs more the longer the chain, where an index costs Redis about
-- 0.2 µs per record and a look in it as much (the begin script's time per event in the consume
-- bench, whose events come 1,000 at a time, went from 1.03-1.16 to 0.93-0.99 µs). A search of
-- one string costs less than an index of it.
local function pages_record_mark(chain, bytes, at)
  local key = string.sub(bytes, at, at + 15)
  if #chain == 1 then
    return pages_record_scan(chain, key)
  end
  if not chain.index then
    chain.index = {}
    -- Walked backwards, so that the first record of a key holds its place.
    for position = #chain, 1, -1 do
      local records = chain[position]
      for from = #records - PAGES_RECORD + 1, 1, -PAGES_RECORD do
        chain.index[string.sub(records, from, from + 15)] = position * PAGES_PLACES + from
      end
    end
  end
  local place = chain.index[key]
  if place then
    return pages_record_holder(chain[math.floor(place / PAGES_PLACES)], place % PAGES_PLACES)
  end
end

-- A book's records lie within a few ranges of id orders, its `held`: each call that gives it
-- records adds the range of those it asked for (see `pages_asking`), merged with those it meets;
-- past PAGES_RANGES, the two soonest are merged (which may cover orders no record has: the ranges
-- only ever say where records may be). Consumers read a backlog's batches side by side, so a
-- batch's holds may come just after those of the batch read after it: two ranges keep both
-- apart, and keep the meta hash's values within Redis's default listpack limit of 64 bytes.
local PAGES_RANGES = 2

-- The ranges `held` (their soonest and latest id orders, 12 bytes each, side by side), as a list of
-- {soonest, latest}.
local function pages_ranges(held)
  local ranges = {}
  for at = 1, #held, 24 do
    ranges[#ranges + 1] = {string.sub(held, at, at + 11), string.sub(held, at + 12, at + 23)}
  end
  return ranges
end

-- Whether no record of the current run's book can be one asked for in this call: the book has
-- none, or none in the range of those asked for. So holds of events read in the order one
-- generator made their ids, as a backlog of one publisher is, are written with no look-up in the
-- records a page holds already (an index of them made in Lua every call, see
-- `pages_record_mark`), which cost Redis about half the begin script's time.
local function pages_none_held()
  local held = pages.books[pages.book].held
  if held == '' then
    return true
  elseif not held or not pages.soonest then
    return false
  end
  for _, range in ipairs(pages_ranges(held)) do
    if not (pages_sooner(pages.latest, range[1]) or pages_sooner(range[2], pages.soonest)) then
      return false
    end
  end
  return true
end

-- The ranges `held` with that of this call's records added, as `held` is kept.
local function pages_held_adding(held)
  local ranges = pages_ranges(held)
  ranges[#ranges + 1] = {pages.soonest, pages.latest}
  table.sort(ranges, function(a, b)
    return pages_sooner(a[1], b[1])
  end)
  local merged = {}
  for _, range in ipairs(ranges) do
    local last = merged[#merged]
    if last and not pages_sooner(last[2], range[1]) then
      if pages_sooner(last[2], range[2]) then
        last[2] = range[2]
      end
    else
      merged[#merged + 1] = range
    end
  end
  while #merged > PAGES_RANGES do
    merged[2][1] = merged[1][1]
    table.remove(merged, 1)
  end
  local parts = {}
  for _, range in ipairs(merged) do
    parts[#parts + 1] = range[1] .. range[2]
  end
  return table.concat(parts)
end

-- Appends the `count` records `added` to the records of the page of the current run whose last
-- string is `last` under the page `key` (see `pages_records_end`). The book's ranges then take in
-- those asked for (`pages_flush` writes them).
local function pages_record(key, added, count, last)
  -- Lua hashes every byte of each string it makes: a new page's records are written as they came.
  local records, room = added, pages.full * PAGES_RECORD
  if last ~= '' then
    records = last .. added
  end
  for at = 1, #records, room do
    local part = #records <= room and records or string.sub(records, at, at + room - 1)
    redis.call('SET', key .. ':r', part, 'PXAT', pages_expiry())
    key = key .. '+'
  end
  pages.added[pages.book] = (pages.added[pages.book] or 0) + count
  pages.recorded[pages.book] = true
end

-- Writes `list[from..to]` (digest, mark, ...) to the page `key` of the current run, with its
-- expiry; counts the marks added to the book.
local function pages_set(key, list, from, to)
  local added = redis.call('HSET', key, unpack(list, from, to))
  pages.added[pages.book] = (pages.added[pages.book] or 0) + added
  pages_expire(key)
end

-- Calls `run(key, from, to)` for each page of the `count` sorted digests whose times `time(k)`
-- gives (as `pages_millis` does): the page's are the `from`th to the `to`th. A page's last is
-- found by bisection: sorted, the digests after the first of a page are in it up to its last
-- millisecond and seventh byte.
local function pages_each(count, time, run)
  local from = 1
  while from <= count do
    local book, page, last, most = pages_page(count, time, from)
    local low, high = from, count
    while low < high do
      local middle = math.floor((low + high + 1) / 2)
      local millis, byte = time(middle)
      if millis < last or (millis == last and byte <= most) then
        low = middle
      else
        high = middle - 1
      end
    end
    pages.book, pages.last = book, last
    run(pages.prefix .. string.format('%d:%d', book, page), from, low)
    from = low + 1
  end
end

-- Ends a page run: writes `values` (digest, mark, ...) to the page `key`, and when the run goes
-- on in the overflow page (`overflowing`), keeps `key` as long and calls `overflow` with that
-- page's key.
local function pages_end(key, values, overflowing, overflow)
  if #values > 0 then
    pages_set(key, values, 1, #values)
  end
  if overflowing then
    pages_expire(key)
    overflow(key .. '+')
  end
end

-- Whether the page `key` is full: then new marks go to its overflow page, `key` .. '+' (and so on),
-- and a mark not in it may be there. A page is only ever filled, never emptied, and lives as long
-- as its overflow pages: it is kept whenever they are written.
local function pages_full(key)
  return redis.call('HLEN', key) >= pages.full
end

-- Writes `mark` ('d', 'x' or 'f') for each of `digests` in the page `key` or the overflow page that
-- holds it (or the last, when none does).
local function pages_mark(key, digests, mark)
  local values, rest = {}, {}
  local found = pages_full(key) and redis.call('HMGET', key, unpack(digests))
  for i, digest in ipairs(digests) do
    if found and not found[i] then
      rest[#rest + 1] = digest
    else
      values[#values + 1] = digest
      values[#values + 1] = mark
    end
  end
  pages_end(key, values, #rest > 0, function(overflow)
    pages_mark(overflow, rest, mark)
  end)
end

-- Writes the `count` marks of `list` from `first` on (digest, mark, ...: 'd', 'x' or 'f', the
-- digests sorted), each page's at once unless the page is full.
local function pages_write(list, first, count)
  local function digest(k)
    return list[first + 2 * k - 2]
  end
  pages_each(count, function(k)
    return pages_millis(digest(k))
  end, function(key, from, to)
    if pages_full(key) then
      local digests = {}
      for k = from, to do
        digests[#digests + 1] = digest(k)
      end
      pages_mark(key, digests, list[first + 1])
    else
      pages_set(key, list, first + 2 * from - 2, first + 2 * to - 1)
    end
  end)
end

-- Adds the marks counted to the counts of the books written to, adds the range of the records
-- asked for to the ranges of those given records (when known), and keeps those books as long as
-- their pages.
local function pages_flush()
  for book, added in pairs(pages.added) do
    local meta = pages.prefix .. string.format('%d', book)
    redis.call('HINCRBY', meta, 'count', added)
    local held = pages.books[book].held
    if pages.recorded[book] and held then
      redis.call('HSET', meta, 'held', pages_held_adding(held))
    end
    local last = (book + 1) * PAGES_BOOK - 1
    redis.call('PEXPIREAT', meta, string.format('%d', math.max(last, marks.millis) + pages.window))
  end
end
