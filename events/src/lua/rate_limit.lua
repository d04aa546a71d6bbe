-- Takes places under rate limits, shared by every consumer that calls it: a limit of one event per
-- `interval` with a burst of `burst`, kept per key as its theoretical arrival time (GCRA). Each
-- request gets the next place and how long to wait for it: places are handed out in order, so
-- waiting events never contend again, and the rate holds whatever number of consumers ask.
-- KEYS[i]      the limit's key for request i (all under one hash tag)
-- ARGV[1]      the interval between events, in microseconds
-- ARGV[2]      the burst: events that may go at once before the interval applies
-- Returns, per request, the wait in microseconds (0: go now).
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local waits = {}
local arrivals = {}
for i, key in ipairs(KEYS) do
  local arrival = arrivals[key] or tonumber(redis.call('GET', key)) or now
  if arrival < now then
    arrival = now
  end
  local wait = arrival - tolerance - now
  if wait < 0 then
    wait = 0
  end
  arrivals[key] = arrival + interval
  waits[i] = wait
end
for key, arrival in pairs(arrivals) do
  -- Kept as long as it matters: until the last place handed out, and a burst's time after.
  local ttl = math.ceil((arrival - now + tolerance) / 1000) + 1000
  redis.call('SET', key, string.format('%d', arrival), 'PX', ttl)
end
return waits
