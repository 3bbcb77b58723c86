-- Run once by the postgres image when its data volume is new: the store gets its own database on
-- the same server, so it is backed up and restored apart from Dagster's rebuildable history.
CREATE DATABASE backfill OWNER dagster;
