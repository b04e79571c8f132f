"""Helpers shared by the tests: virtual time, the kill harness, a port that refuses connections."""
