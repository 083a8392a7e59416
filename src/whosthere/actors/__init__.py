"""Actors: the base loop and the node's actors (PubSub; tracker shards and fetchers later)."""
