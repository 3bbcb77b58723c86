"""Plug-ins for the Dagster instance that dagster.yaml deploys: the PostgreSQL event log that writes
a range run's per-partition events in bulk, the pooled run storage, and the event-log tuning every
process that writes events applies. Not asset wiring: they import nothing from orchestration/."""
