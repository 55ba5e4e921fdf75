-- A series' first or last samples within [p_from, p_until): what the rollups, the usage meter
-- and the live state read beside a window (a counter's reading just before or after it, a
-- device's latest state), one series at a time. Callers pass a column of another table as
-- p_series (series s CROSS JOIN LATERAL samples_last(s.id, ...)); here they are inlinable SQL,
-- so that PostgreSQL plans them as the LATERAL subquery they replace: one index probe a series.
-- Citus cannot push such a LATERAL ... LIMIT down to the shards, and defines them otherwise
-- (0090_sample_ends.citus.sql). Ties in ts are broken by value, so a repeated read is the same.
CREATE FUNCTION samples_first(p_series integer, p_from timestamptz, p_until timestamptz,
                              p_count integer)
RETURNS TABLE (ts timestamptz, value double precision)
LANGUAGE sql STABLE AS $$
    SELECT x.ts, x.value FROM samples x
    WHERE x.series_id = p_series AND x.ts >= p_from AND x.ts < p_until
    ORDER BY x.ts, x.value LIMIT p_count
$$;

CREATE FUNCTION samples_last(p_series integer, p_from timestamptz, p_until timestamptz,
                             p_count integer)
RETURNS TABLE (ts timestamptz, value double precision)
LANGUAGE sql STABLE AS $$
    SELECT x.ts, x.value FROM samples x
    WHERE x.series_id = p_series AND x.ts >= p_from AND x.ts < p_until
    ORDER BY x.ts DESC, x.value DESC LIMIT p_count
$$;
