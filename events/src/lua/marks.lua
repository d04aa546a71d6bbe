-- Idempotency marks of one stream and group, keyed by a 16-byte digest of each event's identity:
-- the entry that took the event's hold (see `marks_holder`), which handles the event while it is
-- pending and has handled it once acknowledged; 'x' once it was dead-lettered; 'f' once given up
-- (dead-lettered before any handler saw it); or 'd' once handled, written when the entry's
-- acknowledgement failed, or for an event of a packed entry (which may be delivered again for its
-- other events). Kept for the idempotency window.
--
-- Marks live in time buckets half the window long, each expiring a window after its bucket ends,
-- so a mark is found for at least the window and at most half as long again. A bucket
-- spreads its marks over hashes by linear hashing on the digest: a shard splits in two whenever
-- the bucket holds more than `load` marks per shard, so every hash stays small enough for Redis's
-- compact listpack encoding, about 20 bytes a mark, whatever the rate. A bucket's meta hash holds
-- its `level`, the `next` shard to split and its `count` of marks (and, in a call, the `size`
-- 2^level).
--
-- Prepended to the scripts that use it; call `marks_setup` first and `marks_flush` last.
local marks = {}

-- Reads the server's time and this call's settings.
local function marks_setup(prefix, window, load)
  local now = redis.call('TIME')
  local millis = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  marks.millis = millis
  marks.prefix = prefix
  marks.window = window
  marks.load = load
  marks.span = math.max(1, math.floor(window / 2))
  marks.bucket = math.floor(millis / marks.span)
  marks.meta = {}
  marks.keys = {}
  marks.changed = {}
end

-- The key of the bucket's meta hash.
local function marks_meta_key(bucket)
  return marks.prefix .. ':' .. string.format('%d', bucket)
end

-- The key of one shard of the bucket; made once per call.
local function marks_key(bucket, shard)
  local keys = marks.keys[bucket]
  if keys == nil then
    keys = {prefix = marks_meta_key(bucket) .. ':'}
    marks.keys[bucket] = keys
  end
  local key = keys[shard]
  if key == nil then
    key = keys.prefix .. string.format('%d', shard)
    keys[shard] = key
  end
  return key
end

-- When the keys of `bucket` expire, in milliseconds since the epoch.
local function marks_expiry(bucket)
  return string.format('%d', (bucket + 3) * marks.span)
end

-- The bucket's {level, next, count, size}, or false when it has no marks; read once per call.
local function marks_meta(bucket)
  local meta = marks.meta[bucket]
  if meta == nil then
    local values = redis.call('HMGET', marks_meta_key(bucket), 'level', 'next', 'count')
    if values[1] then
      local level = tonumber(values[1])
      meta = {level, tonumber(values[2]), tonumber(values[3]), 2 ^ level}
    else
      meta = false
    end
    marks.meta[bucket] = meta
  end
  return meta
end

-- The id of the entry that the hold `mark` names (see `holder` in consumer/part.rs): written out
-- (`<id>` or `<id>#<index>`), or packed into a number: for the mark of an event kept by time whose
-- time is `base`, the entry's time counted from it times 100,000 plus its sequence; else its time
-- and its sequence in five digits side by side.
local function marks_holder(mark, base)
  if string.find(mark, '[-#]', 2) then
    return string.match(mark, '^[^#]*')
  elseif base then
    local packed = tonumber(mark)
    local from_base = math.floor(packed / 100000)
    return string.format('%d-%d', base + from_base, packed - from_base * 100000)
  end
  return string.sub(mark, 1, -6) .. '-' .. string.format('%d', tonumber(string.sub(mark, -5)))
end

-- The digest's first six bytes as a number (exact in a Lua number), for shard arithmetic.
local function marks_number(digest)
  local a, b, c, d, e, f = string.byte(digest, 1, 6)
  return ((((a * 256 + b) * 256 + c) * 256 + d) * 256 + e) * 256 + f
end

local function marks_shard(number, meta)
  local size = meta[4]
  local shard = number % size
  if shard < meta[2] then
    shard = number % (2 * size)
  end
  return shard
end

-- The mark of `digest` (whose number is `number`) in the buckets before the current one that are
-- still in the window, the newest first: an entry id, 'd', 'x', or false.
local function marks_find_before(digest, number)
  for bucket = marks.bucket - 1, marks.bucket - 2, -1 do
    local meta = marks_meta(bucket)
    if meta then
      local mark = redis.call('HGET', marks_key(bucket, marks_shard(number, meta)), digest)
      if mark then
        return mark
      end
    end
  end
  return false
end

-- Splits the next shard of the current bucket in two, moving the marks that now belong to the
-- new shard in two calls. A shard left empty keeps a field that no digest matches (as does a new
-- shard that no mark moved to), so that its key, and its expiry, stay.
local function marks_split(meta)
  local bucket = marks.bucket
  local size = meta[4]
  local from = marks_key(bucket, meta[2])
  local to = marks_key(bucket, meta[2] + size)
  local fields = redis.call('HGETALL', from)
  local moving, leaving = {}, {}
  -- Every digest here has the shard's number in its low bits: bit `level` says which half it
  -- belongs to, and sits in one byte of the six.
  local byte, bit = 6 - math.floor(meta[1] / 8), 2 ^ (meta[1] % 8)
  for i = 1, #fields, 2 do
    if #fields[i] == 16 and math.floor(string.byte(fields[i], byte) / bit) % 2 == 1 then
      moving[#moving + 1] = fields[i]
      moving[#moving + 1] = fields[i + 1]
      leaving[#leaving + 1] = fields[i]
    end
  end
  -- The new shard is made now, with its expiry, even when no mark moves to it.
  if #moving == 0 then
    moving = {'', ''}
  end
  redis.call('HSET', to, unpack(moving))
  redis.call('PEXPIREAT', to, marks_expiry(bucket))
  if #leaving > 0 then
    if #leaving * 2 == #fields then
      redis.call('HSET', from, '', '')
    end
    redis.call('HDEL', from, unpack(leaving))
  end
  meta[2] = meta[2] + 1
  if meta[2] == size then
    meta[1] = meta[1] + 1
    meta[4] = 2 * size
    meta[2] = 0
  end
end

-- Writes `mark` (a holder, 'd', 'x' or 'f') for `digest` in the current bucket with `command`:
-- 'HSET' always, 'HSETNX' unless it has a mark there. Returns whether a new mark was added. Shard
-- keys get their expiry when they are made: the first shard with the bucket, the others by their
-- split.
local function marks_write(command, digest, number, mark)
  local bucket = marks.bucket
  local meta = marks_meta(bucket)
  local fresh = not meta
  if fresh then
    meta = {0, 0, 0, 1}
    marks.meta[bucket] = meta
  end
  local key = marks_key(bucket, marks_shard(number, meta))
  if redis.call(command, key, digest, mark) == 0 then
    return false
  end
  if fresh then
    redis.call('PEXPIREAT', key, marks_expiry(bucket))
  end
  meta[3] = meta[3] + 1
  while meta[3] > marks.load * (meta[4] + meta[2]) do
    marks_split(meta)
  end
  marks.changed[bucket] = true
  return true
end

-- The mark of `digest` in the current bucket, or false.
local function marks_find_current(digest, number)
  local meta = marks_meta(marks.bucket)
  if not meta then
    return false
  end
  return redis.call('HGET', marks_key(marks.bucket, marks_shard(number, meta)), digest)
end

-- Writes back the meta of the buckets this call changed.
local function marks_flush()
  for bucket in pairs(marks.changed) do
    local meta = marks.meta[bucket]
    local key = marks_meta_key(bucket)
    redis.call('HSET', key, 'level', meta[1], 'next', meta[2], 'count', meta[3])
    redis.call('PEXPIREAT', key, marks_expiry(bucket))
  end
end
