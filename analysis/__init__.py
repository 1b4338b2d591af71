"""Collapse analysis over MLflow runs."""
