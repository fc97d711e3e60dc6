"""Prefect 3 wiring: each task calls one component function; plus the `visionflow` CLI."""
