-- gatekeeper: one knock of one source, over every sequence it may move, atomically.
-- KEYS, per track i: [2i-1] its progress key, [2i] its door's grant key.
-- ARGV[1] the knock (proto << 16 | port, decimal); ARGV[2] "1" if the source is locked
-- out as a scanner on the gateway that saw the knock; ARGV[3] the channel grants are
-- published on; ARGV[4] "<node>|<address>" (who asks, for whom). Then five per track:
-- its steps (comma-separated), sequence timeout (ms), "1" if wrong knocks are ignored,
-- open_for (ms; "0" for a close sequence), the door's name.
-- Returns one outcome a track: 0 nothing, 1 advanced, 2 reset, 3 completed (granted),
-- 4 duplicate, 5 closed (grant revoked), 6 nothing to close, 7 completed while locked out.
-- Progress keys expire (PX) sequence_timeout after the first knock, by the server's
-- clock; a grant key expires after open_for; the grant is set and published in the same
-- script that completes the sequence, so no completion is ever without its grant.
local knock = ARGV[1]
local out = {}
for i = 1, #KEYS / 2 do
  local a = 4 + (i - 1) * 5
  local steps = {}
  for s in string.gmatch(ARGV[a + 1], '[^,]+') do steps[#steps + 1] = s end
  local timeout = ARGV[a + 2]
  local open_for = tonumber(ARGV[a + 4])
  local door = ARGV[a + 5]
  local pkey, gkey = KEYS[2 * i - 1], KEYS[2 * i]
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
          redis.call('SET', gkey, '1', 'PX', open_for)
          redis.call('PUBLISH', ARGV[3], 'g|' .. ARGV[4] .. '|' .. door .. '|' .. open_for)
          outcome = 3
        end
      elseif redis.call('DEL', gkey) == 1 then
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
  elseif progress > 0 and ARGV[a + 3] ~= '1' then
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
