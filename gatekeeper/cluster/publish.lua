-- gatekeeper: share a grant made on one gateway (an SPA, encrypted or one-time door).
-- KEYS the grant keys of the ports granted now, one a port; ARGV[1] the channel;
-- ARGV[2] "<node>|<address>"; ARGV[3] the door; ARGV[4] open_for (ms); ARGV[5] those
-- ports (comma-separated, in the order of KEYS). Sets each key with its expiry (the
-- door's other ports keep theirs) and publishes the grant, at once.
for i = 1, #KEYS do redis.call('SET', KEYS[i], '1', 'PX', ARGV[4]) end
redis.call('PUBLISH', ARGV[1], 'g|' .. ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4] .. '|' .. ARGV[5])
return 1
