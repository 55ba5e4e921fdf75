-- Raw samples as a TimescaleDB hypertable with daily chunks, compressed after a week
-- (segmented by series so a series' history compresses together) and dropped after the
-- retention period by jinsuan.store.partitions.apply_retention.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE samples (
    ts         timestamptz NOT NULL,
    series_id  integer NOT NULL,
    value      double precision NOT NULL
);

SELECT create_hypertable('samples', 'ts', chunk_time_interval => interval '1 day');
CREATE INDEX samples_series_ts ON samples (series_id, ts);
ALTER TABLE samples SET (timescaledb.compress, timescaledb.compress_segmentby = 'series_id');
SELECT add_compression_policy('samples', interval '7 days');
