"""The pure domain: sessions, timeframes, symbols, bars and the rules over them. Imports neither
Dagster nor the store nor the providers (tests/test_boundaries.py)."""
