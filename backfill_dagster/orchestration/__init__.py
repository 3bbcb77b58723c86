"""Dagster wiring: partitions, resources, assets, checks, sensors, schedules, jobs.

Thin by design: each piece calls the core (calendar, ingest, store) and holds no logic of its own.
"""
