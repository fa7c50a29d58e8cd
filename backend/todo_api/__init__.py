"""Todo task API."""
