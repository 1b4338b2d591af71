"""Small Hydra apps and helpers for testing launchers and sweepers without the trainer."""
