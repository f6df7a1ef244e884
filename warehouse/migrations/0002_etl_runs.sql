-- Every ETL run, successful or not (docs/WAREHOUSE.md, "Runs").

CREATE TABLE etl_runs (
    id           uuid        PRIMARY KEY,
    -- full: every source row; incremental: rows committed since the last successful run's snapshots.
    mode         text        NOT NULL CHECK (mode IN ('full', 'incremental')),
    -- scheduled (cron), manual (CLI), api (POST /api/reports/loads).
    trigger      text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    duration_ms  bigint,
    -- The window: the source snapshots (pg_snapshot text, 'xmin:xmax:xip,…') the run loaded from and
    -- up to, per source database. `from` is NULL for a full load.
    window_from  jsonb,
    window_to    jsonb,
    -- Rows upserted or deleted per warehouse table: {"fact_sales": 12, …}.
    rows         jsonb       NOT NULL DEFAULT '{}',
    error        text,
    CONSTRAINT etl_runs_error_when_failed CHECK ((status = 'failed') = (error IS NOT NULL))
);

CREATE INDEX etl_runs_started_idx ON etl_runs (started_at DESC);

-- Where the next incremental run starts: the snapshot of each source database that the last
-- successful run read, written in the same transaction as the data it loaded.
CREATE TABLE etl_watermarks (
    source     text        PRIMARY KEY CHECK (source IN ('books', 'orders')),
    snapshot   text        NOT NULL,
    run_id     uuid        NOT NULL REFERENCES etl_runs (id),
    updated_at timestamptz NOT NULL DEFAULT now()
);
