"""bqgate.sql."""
