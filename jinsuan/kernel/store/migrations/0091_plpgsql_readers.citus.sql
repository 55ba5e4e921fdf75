-- On Citus, the SQL functions whose statements read the distributed samples with their
-- parameters cannot be planned ("could not create distributed plan ... parameters in SQL
-- functions"): they are made PL/pgSQL, the same statements (0080_series_rollups.sql says what
-- they do), whose parameters Citus plans with: the hourly rollup's dashboard step, and a
-- series' points and latest reading that the device panels read.
CREATE OR REPLACE FUNCTION roll_hour_for_dashboards(p_site bigint, p_hour timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
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
END $$;

CREATE OR REPLACE FUNCTION series_points(p_series integer, p_from timestamptz,
                                         p_to timestamptz, p_bucket_s double precision)
RETURNS TABLE (ts timestamptz, n bigint, total double precision, low double precision,
               high double precision)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
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
        GROUP BY 1;
END $$;

CREATE OR REPLACE FUNCTION series_latest(p_series integer, p_from timestamptz, p_to timestamptz)
RETURNS TABLE (ts timestamptz, value double precision)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
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
        LIMIT 1;
END $$;
