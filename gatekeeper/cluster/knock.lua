-- gatekeeper: one knock of one source, over every sequence it may move, atomically.
-- KEYS, per track in turn: its progress key, then its door's grant keys (one a port of
-- the door's opens, in the order of that track's ports argument).
-- ARGV[1] the knock (proto << 16 | port, decimal); ARGV[2] "1" if the source is locked
-- out as a scanner on the gateway that saw the knock; ARGV[3] the channel grants are
-- published on; ARGV[4] "<node>|<address>" (who asks, for whom). Then six per track:
-- its steps (comma-separated), sequence timeout (ms), "1" if wrong knocks are ignored,
-- open_for (ms; "0" for a close sequence), the door's name, the door's opens
-- (comma-separated, "22:tcp,80:tcp").
-- Returns one outcome a track: 0 nothing, 1 advanced, 2 reset, 3 completed (granted),
-- 4 duplicate, 5 closed (grant revoked), 6 nothing to close, 7 completed while locked out.
-- Progress keys expire (PX) sequence_timeout after the first knock, by the server's
-- clock; a completion sets every port's grant key (PX open_for) and publishes the grant
-- in the same script, so no completion is ever without its grant; a close deletes them.
local knock = ARGV[1]
local out = {}
local k = 1  -- the track's first key
local a = 5  -- the track's first argument
local i = 0
while a + 5 <= #ARGV do
  i = i + 1
  local steps = {}
  for s in string.gmatch(ARGV[a], '[^,]+') do steps[#steps + 1] = s end
  local timeout = ARGV[a + 1]
  local ignore = ARGV[a + 2]
  local open_for = tonumber(ARGV[a + 3])
  local door = ARGV[a + 4]
  local ports = ARGV[a + 5]
  local pkey = KEYS[k]
  local gkeys = {}
  local n = 0
  for _ in string.gmatch(ports, '[^,]+') do
    n = n + 1
    gkeys[n] = KEYS[k + n]
  end
  k = k + 1 + n
  a = a + 6
  local progress = tonumber(redis.call('GET', pkey) or '0')
  local outcome = 0
  if knock == steps[progress + 1] then
    progress = progress + 1
    if progress == #steps then
      if progress > 1 then redis.call('DEL', pkey) end
      if open_for > 0 then
        if ARGV[2] == '1' then
          outcome = 7
        else
          for j = 1, n do redis.call('SET', gkeys[j], '1', 'PX', open_for) end
          redis.call('PUBLISH', ARGV[3],
                     'g|' .. ARGV[4] .. '|' .. door .. '|' .. open_for .. '|' .. ports)
          outcome = 3
        end
      elseif redis.call('DEL', unpack(gkeys)) > 0 then
        redis.call('PUBLISH', ARGV[3], 'r|' .. ARGV[4] .. '|' .. door)
        outcome = 5
      else
        outcome = 6
      end
    elseif progress == 1 then
      redis.call('SET', pkey, '1', 'PX', timeout)
      outcome = 1
    else
      redis.call('SET', pkey, tostring(progress), 'KEEPTTL')
      outcome = 1
    end
  elseif progress > 0 and knock == steps[progress] then
    outcome = 4
  elseif progress > 0 and ignore ~= '1' then
    if knock == steps[1] then
      redis.call('SET', pkey, '1', 'PX', timeout)
    else
      redis.call('DEL', pkey)
    end
    outcome = 2
  end
  out[i] = outcome
end
return out
