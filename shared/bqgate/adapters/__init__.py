"""bqgate.adapters."""
