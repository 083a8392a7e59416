"""Actors: the base loop and the node's actors (shards, PubSub, fetchers, presence client,
cluster), each a thin shell over a pure core."""
