-- Moves delayed events whose time has come from the stream's delayed set into the stream, at most
-- ARGV[1] of them, each XADD and ZREM together: an event is added once, however many consumers
-- call this at once, and stays in the set (surviving restarts with the rest of Redis's data)
-- until then. A member is a JSON array: the trimming (`''`, `MAXLEN` or `MINID`, its operator,
-- the length or the age in milliseconds), then the entry's fields and values. A member that is not
-- such an array (written by something else) moves to the set KEYS[3] with its due time, so it
-- never blocks the others and is not lost. An XADD that Redis refuses (memory, permissions) fails
-- the call, leaving that event and those after it for the next.
-- KEYS[1]  the stream's delayed set (scores: due times in milliseconds since the epoch)
-- KEYS[2]  the stream
-- KEYS[3]  the set of delayed events that could not be added
-- ARGV[1]  the most events to move
-- Returns {moved, the due time of the next event left or false, members set aside}.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]), 'WITHSCORES')

-- The XADD arguments for `member`, or nothing when it is not a delayed event.
local function xadd_args(member)
  local ok, entry = pcall(cjson.decode, member)
  if not ok or type(entry) ~= 'table' or #entry < 5 or #entry % 2 == 0 or #entry > 7000 then
    return nil
  end
  local args = {KEYS[2]}
  if entry[1] == 'MAXLEN' then
    args = {KEYS[2], 'MAXLEN', entry[2], entry[3]}
  elseif entry[1] == 'MINID' then
    local age = tonumber(entry[3])
    if not age then
      return nil
    end
    args = {KEYS[2], 'MINID', entry[2], string.format('%d', now - age)}
  end
  args[#args + 1] = '*'
  for i = 4, #entry do
    if type(entry[i]) ~= 'string' then
      return nil
    end
    args[#args + 1] = entry[i]
  end
  return args
end

local moved, aside = 0, 0
for i = 1, #due, 2 do
  local member, score = due[i], due[i + 1]
  local args = xadd_args(member)
  if args then
    redis.call('XADD', unpack(args))
    moved = moved + 1
  else
    redis.call('ZADD', KEYS[3], score, member)
    aside = aside + 1
  end
  redis.call('ZREM', KEYS[1], member)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {moved + aside, next[2] or false, aside}
