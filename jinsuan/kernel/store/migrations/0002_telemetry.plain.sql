-- Raw samples, range-partitioned by day; partitions are created on demand by
-- jinsuan.store.partitions before rows for a new day are copied in.
CREATE TABLE samples (
    ts         timestamptz NOT NULL,
    series_id  integer NOT NULL,
    value      double precision NOT NULL
) PARTITION BY RANGE (ts);

CREATE INDEX samples_series_ts ON samples (series_id, ts);
