"""The wire: message records, their msgpack codec, sockets, endpoints and the runtime directory."""
