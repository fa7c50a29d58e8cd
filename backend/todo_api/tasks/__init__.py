"""Tasks: models, the service (all SQL) and the HTTP routes."""
