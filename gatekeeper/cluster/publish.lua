-- gatekeeper: share a grant made on one gateway (an SPA or encrypted-sequence door).
-- KEYS[1] the grant key; ARGV[1] the channel; ARGV[2] "<node>|<address>"; ARGV[3] the
-- door; ARGV[4] open_for (ms). Sets the key with its expiry and publishes it, at once.
redis.call('SET', KEYS[1], '1', 'PX', ARGV[4])
redis.call('PUBLISH', ARGV[1], 'g|' .. ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4])
return 1
