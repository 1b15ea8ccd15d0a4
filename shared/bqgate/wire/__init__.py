"""bqgate.wire."""
