"""The local control channel between the daemon and a worker: protocol, server, client."""
