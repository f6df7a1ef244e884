-- Reading from replicas (docs/WAREHOUSE.md, "Reading from replicas"): which member served each run,
-- and the WAL position and history each watermark was taken at.

-- 'replica 10.0.0.2:5432', 'primary 10.0.0.1:5432', or per database when they differ
-- ('orders: replica …; books: primary …'). NULL for runs before this migration and failed runs.
ALTER TABLE etl_runs ADD COLUMN source text;
-- Why a run read every row although it was incremental (the source's history changed: a failover
-- or a restore), else NULL.
ALTER TABLE etl_runs ADD COLUMN reread text;

-- The position the snapshot was taken at: the member's replay position (a replica) or WAL insert
-- position (a primary), read after the snapshot, so at or past it. A later run reads only a member
-- whose replay has passed it. `timeline` and `system_identifier` are the primary's when the run
-- began: a position only compares within one history, and a changed history makes the next run read
-- everything again. NULL for watermarks written before this migration.
ALTER TABLE etl_watermarks
    ADD COLUMN lsn               pg_lsn,
    ADD COLUMN timeline          integer,
    ADD COLUMN system_identifier bigint;
