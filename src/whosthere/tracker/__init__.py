"""The tracker: the pure replicated state (`state`) and the shard actor that serves it."""
