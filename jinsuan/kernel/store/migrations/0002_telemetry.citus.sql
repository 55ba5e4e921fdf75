-- Raw samples on Citus: distributed over the workers by series (a series' history lives in one
-- shard, so the rollups' and panels' reads of one series go to one worker), range-partitioned
-- by UTC day like plain PostgreSQL's (jinsuan.kernel.store.partitions makes the days ahead and
-- turns days older than a week columnar). docs/scaling.md, "Citus", says why.
CREATE EXTENSION IF NOT EXISTS citus_columnar;  -- propagated to the workers

CREATE TABLE samples (
    ts         timestamptz NOT NULL,
    series_id  integer NOT NULL,
    value      double precision NOT NULL
) PARTITION BY RANGE (ts);

CREATE INDEX samples_series_ts ON samples (series_id, ts);
SELECT create_distributed_table('samples', 'series_id', shard_count => 16);
