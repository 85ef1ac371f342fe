"""The projection: every event kept in a hash-chained log, and the status view the dashboard reads."""
