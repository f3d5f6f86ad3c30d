"""Processes the local stack and the tests start: a private redis-server and friends."""
