"""The server's housekeeping, for every page: memory, TCP_NODELAY, the run log."""
