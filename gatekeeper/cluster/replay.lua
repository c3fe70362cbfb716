-- gatekeeper: a replay check shared by every gateway. KEYS[1] the digest's key; ARGV[1]
-- how long it is remembered (ms). Returns 1 if it was new (now remembered), 0 if seen.
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 1 end
return 0
