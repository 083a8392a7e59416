"""The tracker, pure: the replicated state, its clocks, deltas and replication, and the
shard's other bookkeeping. No sockets and no clock reads: the shard actor (`actors.shard`)
serves it."""
