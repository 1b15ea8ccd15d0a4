"""bqgate.dev."""
