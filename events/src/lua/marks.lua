-- Idempotency marks of one stream and group: which events were handled ('d') or dead-lettered
-- ('x') within the idempotency window, a 16-byte digest of each event's identity apiece.
--
-- Marks live in time buckets a quarter of the window long, each expiring a window after its
-- bucket ends, so a mark is found for at least the window and at most a quarter longer. A bucket
-- spreads its marks over hashes by linear hashing on the digest: a shard splits in two whenever
-- the bucket holds more than `load` marks per shard, so every hash stays small enough for Redis's
-- compact listpack encoding, about 20 bytes a mark, whatever the rate. A bucket's meta hash holds
-- its `level`, the `next` shard to split and its `count` of marks.
--
-- Prepended to the scripts that use it; call `marks_setup` first and `marks_flush` last.
local marks = {}

-- Reads the server's time and this call's settings.
local function marks_setup(prefix, window, load)
  local now = redis.call('TIME')
  local millis = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  marks.prefix = prefix
  marks.load = load
  marks.span = math.max(1, math.floor(window / 4))
  marks.bucket = math.floor(millis / marks.span)
  marks.meta = {}
  marks.changed = {}
end

local function marks_key(bucket, shard)
  if shard == nil then
    return marks.prefix .. ':' .. string.format('%d', bucket)
  end
  return marks.prefix .. ':' .. string.format('%d', bucket) .. ':' .. string.format('%d', shard)
end

-- When the keys of `bucket` expire, in milliseconds since the epoch.
local function marks_expiry(bucket)
  return string.format('%d', (bucket + 5) * marks.span)
end

-- The bucket's {level, next, count}, or false when it has no marks; read once per call.
local function marks_meta(bucket)
  local meta = marks.meta[bucket]
  if meta == nil then
    local values = redis.call('HMGET', marks_key(bucket), 'level', 'next', 'count')
    if values[1] then
      meta = {tonumber(values[1]), tonumber(values[2]), tonumber(values[3])}
    else
      meta = false
    end
    marks.meta[bucket] = meta
  end
  return meta
end

-- The digest's first six bytes as a number (exact in a Lua number), for shard arithmetic.
local function marks_number(digest)
  local a, b, c, d, e, f = string.byte(digest, 1, 6)
  return ((((a * 256 + b) * 256 + c) * 256 + d) * 256 + e) * 256 + f
end

local function marks_shard(number, meta)
  local size = 2 ^ meta[1]
  local shard = number % size
  if shard < meta[2] then
    shard = number % (2 * size)
  end
  return shard
end

-- The mark of `digest` in the window: 'd', 'x', or false.
local function marks_find(digest)
  local number = marks_number(digest)
  for bucket = marks.bucket, marks.bucket - 4, -1 do
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

-- Splits the next shard of the current bucket in two.
local function marks_split(meta)
  local bucket = marks.bucket
  local size = 2 ^ meta[1]
  local from = marks_key(bucket, meta[2])
  local to = marks_key(bucket, meta[2] + size)
  local fields = redis.call('HGETALL', from)
  local moved = false
  for i = 1, #fields, 2 do
    if marks_number(fields[i]) % (2 * size) ~= meta[2] then
      redis.call('HSET', to, fields[i], fields[i + 1])
      redis.call('HDEL', from, fields[i])
      moved = true
    end
  end
  if moved then
    redis.call('PEXPIREAT', to, marks_expiry(bucket))
  end
  meta[2] = meta[2] + 1
  if meta[2] == size then
    meta[1] = meta[1] + 1
    meta[2] = 0
  end
end

-- Marks `digest` as `mark` ('d' or 'x') in the current bucket.
local function marks_add(digest, mark)
  local bucket = marks.bucket
  local meta = marks_meta(bucket)
  if not meta then
    meta = {0, 0, 0}
    marks.meta[bucket] = meta
  end
  local key = marks_key(bucket, marks_shard(marks_number(digest), meta))
  if redis.call('HSET', key, digest, mark) == 1 then
    if redis.call('HLEN', key) == 1 then
      redis.call('PEXPIREAT', key, marks_expiry(bucket))
    end
    meta[3] = meta[3] + 1
    while meta[3] > marks.load * (2 ^ meta[1] + meta[2]) do
      marks_split(meta)
    end
    marks.changed[bucket] = true
  end
end

-- Writes back the meta of the buckets this call changed.
local function marks_flush()
  for bucket in pairs(marks.changed) do
    local meta = marks.meta[bucket]
    local key = marks_key(bucket)
    redis.call('HSET', key, 'level', meta[1], 'next', meta[2], 'count', meta[3])
    redis.call('PEXPIREAT', key, marks_expiry(bucket))
  end
end
