"""bqgate.service."""
