"""Rate limiting: algorithms, policies, memory and Redis storage, bans, the gate and ratelimit
stages."""
