"""Shared infrastructure of the three CLIs: config, checkpoints, devices, metrics, logging."""
