"""Offline tools that run from a checkout and are not installed with the adahop package
(pyproject.toml packages only adahop*)."""
