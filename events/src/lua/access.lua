-- Checks, without running any, that this connection's user may run each command it needs,
-- on the keys it will use (redis.acl_check_cmd, Redis 7.0).
-- ARGV: for each command, how many words it has, then its words.
-- Returns the position of the first command refused (1 for the first), or 0 when all are allowed.
local at, position = 1, 0
while at <= #ARGV do
  local words = tonumber(ARGV[at])
  position = position + 1
  if not redis.acl_check_cmd(unpack(ARGV, at + 1, at + words)) then
    return position
  end
  at = at + words + 1
end
return 0
