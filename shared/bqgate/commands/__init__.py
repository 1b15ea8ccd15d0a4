"""bqgate.commands."""
