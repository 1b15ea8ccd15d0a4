"""bqgate.sql."""

#: Query parameter names the gateway itself uses (the masking key travels as query
#: parameters); agents may neither send nor reference parameters with this prefix.
RESERVED_PARAMETER_PREFIX = "bqgate_"
