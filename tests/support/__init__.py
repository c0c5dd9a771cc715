"""Test-only helpers: fault injection and the probed server."""
