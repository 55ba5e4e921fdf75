-- Per-device rollups: what a device panel reads over any range longer than a day, so that no
-- dashboard reads raw samples over a long range (their cost grows with retention; these grow
-- with the number of hours). Hours are UTC, like Grafana's buckets ($__timeGroup rounds the
-- epoch); a day is the UTC day, so that it is a whole number of hourly buckets.

-- Which source a dashboard reads for a range, the one rule every panel follows: raw samples
-- over a day or less, hourly rollups up to 31 days, daily rollups beyond (a year is then 365
-- points a series, not 8,760). IMMUTABLE, so with a panel's literal range the planner folds it
-- and drops the branches of a query that read the other sources.
CREATE FUNCTION rollup_source(p_from timestamptz, p_to timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_to - p_from <= interval '1 day' THEN 'raw'
                WHEN p_to - p_from <= interval '31 days' THEN 'hourly'
                ELSE 'daily' END
$$;
--
-- n, total, low and high give an average (total / n), a range and a counter's increase
-- (high - low within a counter's monotone stretch); last_ts and last the latest reading.
-- Both tables are written by roll_hour_for_dashboards(), which the hourly site rollup calls for
-- every hour it computes (collectors.rollup), so late data recomputes them like the site
-- figures.
CREATE TABLE rollup_series_hourly (
    series_id  integer NOT NULL REFERENCES series,
    hour       timestamptz NOT NULL,
    n          integer NOT NULL,
    total      double precision NOT NULL,
    low        double precision NOT NULL,
    high       double precision NOT NULL,
    last_ts    timestamptz NOT NULL,
    last       double precision NOT NULL,
    PRIMARY KEY (series_id, hour) INCLUDE (n, total, low, high, last_ts, last)
);

CREATE TABLE rollup_series_daily (
    series_id  integer NOT NULL REFERENCES series,
    day        timestamptz NOT NULL,
    n          integer NOT NULL,
    total      double precision NOT NULL,
    low        double precision NOT NULL,
    high       double precision NOT NULL,
    last_ts    timestamptz NOT NULL,
    last       double precision NOT NULL,
    PRIMARY KEY (series_id, day) INCLUDE (n, total, low, high, last_ts, last)
);

-- How late each agent's reports arrived, per hour: the "Agent lag" panel over long ranges.
CREATE TABLE rollup_agent_lag_hourly (
    agent_id   text NOT NULL REFERENCES agents,
    hour       timestamptz NOT NULL,
    reports    integer NOT NULL,
    max_lag_s  double precision NOT NULL,
    PRIMARY KEY (agent_id, hour) INCLUDE (reports, max_lag_s)
);

-- A site's hourly figures summed per UTC day, for the province and energy panels over long
-- ranges: sums of the hourly rows (divide by ``hours`` for a mean), and which hours of the day
-- have a row (bit n: hour n), so that a mean over several sites' hours counts each hour once
-- (bit_count(bit_or(hours_present::bit(24)))). The *_paired columns keep only the hours where
-- both IT and facility energy were measured, the hours a PUE is made of (docs/metering.md).
CREATE TABLE rollup_site_daily (
    site_id                bigint NOT NULL REFERENCES sites,
    day                    timestamptz NOT NULL,
    hours                  integer NOT NULL,
    hours_present          integer NOT NULL,
    it_kwh                 numeric,
    facility_kwh           numeric,
    hours_paired           integer NOT NULL,
    it_kwh_paired          numeric,
    facility_kwh_paired    numeric,
    fp16_pflops            double precision NOT NULL,
    accelerators           bigint NOT NULL,
    racks                  bigint NOT NULL,
    coverage_it            double precision NOT NULL,
    coverage_facility      double precision NOT NULL,
    coverage_accelerators  double precision NOT NULL,
    PRIMARY KEY (site_id, day)
        INCLUDE (hours, hours_present, it_kwh, facility_kwh, hours_paired, it_kwh_paired,
                 facility_kwh_paired, fp16_pflops, accelerators, racks, coverage_it,
                 coverage_facility, coverage_accelerators)
);

CREATE FUNCTION roll_hour_for_dashboards(p_site bigint, p_hour timestamptz) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM rollup_series_hourly r USING series se
    WHERE se.site_id = p_site AND r.series_id = se.id AND r.hour = p_hour;
    INSERT INTO rollup_series_hourly (series_id, hour, n, total, low, high, last_ts, last)
    SELECT x.series_id, p_hour, count(*), sum(x.value), min(x.value), max(x.value), max(x.ts),
           (array_agg(x.value ORDER BY x.ts DESC))[1]
    FROM series se
    JOIN samples x ON x.series_id = se.id
    WHERE se.site_id = p_site AND x.ts >= p_hour AND x.ts < p_hour + interval '1 hour'
    GROUP BY x.series_id;

    DELETE FROM rollup_series_daily r USING series se
    WHERE se.site_id = p_site AND r.series_id = se.id
      AND r.day = date_bin('1 day', p_hour, timestamptz '2000-01-01 00:00+00');
    INSERT INTO rollup_series_daily (series_id, day, n, total, low, high, last_ts, last)
    SELECT h.series_id, date_bin('1 day', p_hour, timestamptz '2000-01-01 00:00+00'), sum(h.n),
           sum(h.total), min(h.low), max(h.high), max(h.last_ts),
           (array_agg(h.last ORDER BY h.last_ts DESC))[1]
    FROM series se
    JOIN rollup_series_hourly h ON h.series_id = se.id
    WHERE se.site_id = p_site
      AND h.hour >= date_bin('1 day', p_hour, timestamptz '2000-01-01 00:00+00')
      AND h.hour < date_bin('1 day', p_hour, timestamptz '2000-01-01 00:00+00') + interval '1 day'
    GROUP BY h.series_id;

    DELETE FROM rollup_site_daily
    WHERE site_id = p_site AND day = date_bin('1 day', p_hour, timestamptz '2000-01-01 00:00+00');
    INSERT INTO rollup_site_daily (site_id, day, hours, hours_present, it_kwh, facility_kwh,
                                   hours_paired, it_kwh_paired, facility_kwh_paired,
                                   fp16_pflops, accelerators, racks, coverage_it,
                                   coverage_facility, coverage_accelerators)
    SELECT p_site, date_bin('1 day', p_hour, timestamptz '2000-01-01 00:00+00'), count(*),
           bit_or(1 << extract(hour FROM r.hour AT TIME ZONE 'UTC')::integer),
           sum(r.it_kwh), sum(r.facility_kwh),
           coalesce(bit_or(1 << extract(hour FROM r.hour AT TIME ZONE 'UTC')::integer)
                    FILTER (WHERE r.it_kwh IS NOT NULL AND r.facility_kwh IS NOT NULL), 0),
           sum(r.it_kwh) FILTER (WHERE r.it_kwh IS NOT NULL AND r.facility_kwh IS NOT NULL),
           sum(r.facility_kwh) FILTER (WHERE r.it_kwh IS NOT NULL AND r.facility_kwh IS NOT NULL),
           sum(r.fp16_pflops), sum(r.accelerators), sum(r.racks), sum(r.coverage_it),
           sum(r.coverage_facility), sum(r.coverage_accelerators)
    FROM rollup_site_hourly r
    WHERE r.site_id = p_site
      AND r.hour >= date_bin('1 day', p_hour, timestamptz '2000-01-01 00:00+00')
      AND r.hour < date_bin('1 day', p_hour, timestamptz '2000-01-01 00:00+00') + interval '1 day'
    HAVING count(*) > 0;

    DELETE FROM rollup_agent_lag_hourly r USING agents a
    WHERE a.site_id = p_site AND r.agent_id = a.id AND r.hour = p_hour;
    INSERT INTO rollup_agent_lag_hourly (agent_id, hour, reports, max_lag_s)
    SELECT r.agent_id, p_hour, count(*), max(extract(epoch FROM r.received_at - r.created_at))
    FROM agents a
    JOIN reports r ON r.agent_id = a.id
    WHERE a.site_id = p_site AND r.created_at >= p_hour
      AND r.created_at < p_hour + interval '1 hour'
    GROUP BY r.agent_id;
$$;

-- A series' points over [p_from, p_to] in buckets of p_bucket_s seconds (Grafana's
-- $__interval), from the source rollup_source() names, or the daily rollup when a bucket is a
-- day or more. Points from a rollup fall on whole hours (days), so a narrower bucket gets one
-- point an hour (day). An inlinable SQL function: the planner folds away the branches that do
-- not apply.
CREATE FUNCTION series_points(p_series integer, p_from timestamptz, p_to timestamptz,
                              p_bucket_s double precision)
RETURNS TABLE (ts timestamptz, n bigint, total double precision, low double precision,
               high double precision)
LANGUAGE sql STABLE AS $$
    SELECT to_timestamp(floor(extract(epoch FROM x.ts) / p_bucket_s) * p_bucket_s), count(*),
           sum(x.value), min(x.value), max(x.value)
    FROM samples x
    WHERE rollup_source(p_from, p_to) = 'raw'
      AND x.series_id = p_series AND x.ts BETWEEN p_from AND p_to
    GROUP BY 1
    UNION ALL
    SELECT to_timestamp(floor(extract(epoch FROM h.hour) / greatest(p_bucket_s, 3600))
                        * greatest(p_bucket_s, 3600)), sum(h.n), sum(h.total), min(h.low),
           max(h.high)
    FROM rollup_series_hourly h
    WHERE rollup_source(p_from, p_to) = 'hourly' AND p_bucket_s < 86400
      AND h.series_id = p_series AND h.hour BETWEEN date_trunc('hour', p_from) AND p_to
    GROUP BY 1
    UNION ALL
    SELECT to_timestamp(floor(extract(epoch FROM d.day) / greatest(p_bucket_s, 86400))
                        * greatest(p_bucket_s, 86400)), sum(d.n), sum(d.total), min(d.low),
           max(d.high)
    FROM rollup_series_daily d
    WHERE (rollup_source(p_from, p_to) = 'daily'
           OR (rollup_source(p_from, p_to) = 'hourly' AND p_bucket_s >= 86400))
      AND d.series_id = p_series
      AND d.day BETWEEN date_bin('1 day', p_from, timestamptz '2000-01-01 00:00+00') AND p_to
    GROUP BY 1
$$;

-- A series' latest reading in [p_from, p_to]: the latest raw sample when rollup_source() says
-- raw, else the last reading of the latest rolled-up hour (so over a long range it is as old as
-- the latest closed hour: at most an hour and the rollup's grace).
CREATE FUNCTION series_latest(p_series integer, p_from timestamptz, p_to timestamptz)
RETURNS TABLE (ts timestamptz, value double precision)
LANGUAGE sql STABLE AS $$
    SELECT c.ts, c.value FROM (
        (SELECT x.ts, x.value FROM samples x
         WHERE rollup_source(p_from, p_to) = 'raw'
           AND x.series_id = p_series AND x.ts BETWEEN p_from AND p_to
         ORDER BY x.ts DESC LIMIT 1)
        UNION ALL
        (SELECT h.last_ts, h.last FROM rollup_series_hourly h
         WHERE rollup_source(p_from, p_to) <> 'raw'
           AND h.series_id = p_series AND h.hour BETWEEN date_trunc('hour', p_from) AND p_to
         ORDER BY h.hour DESC LIMIT 1)
    ) c
    LIMIT 1
$$;

-- An agent's report lag over [p_from, p_to] in buckets of p_bucket_s seconds: from the reports
-- themselves when rollup_source() says raw, from the hourly maxima otherwise.
CREATE FUNCTION agent_lag_points(p_agent text, p_from timestamptz, p_to timestamptz,
                                 p_bucket_s double precision)
RETURNS TABLE (ts timestamptz, max_lag_s double precision)
LANGUAGE sql STABLE AS $$
    SELECT to_timestamp(floor(extract(epoch FROM r.created_at) / p_bucket_s) * p_bucket_s),
           max(extract(epoch FROM r.received_at - r.created_at))::double precision
    FROM reports r
    WHERE rollup_source(p_from, p_to) = 'raw'
      AND r.agent_id = p_agent AND r.created_at BETWEEN p_from AND p_to
    GROUP BY 1
    UNION ALL
    SELECT to_timestamp(floor(extract(epoch FROM h.hour) / greatest(p_bucket_s, 3600))
                        * greatest(p_bucket_s, 3600)), max(h.max_lag_s)
    FROM rollup_agent_lag_hourly h
    WHERE rollup_source(p_from, p_to) <> 'raw'
      AND h.agent_id = p_agent AND h.hour BETWEEN date_trunc('hour', p_from) AND p_to
    GROUP BY 1
$$;
