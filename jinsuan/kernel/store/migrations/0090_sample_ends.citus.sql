-- samples_first / samples_last (0090_sample_ends.plain.sql says what they are for) on Citus.
-- A LATERAL subquery with a LIMIT that refers to a table Citus does not distribute alike (here
-- series, kept on the coordinator) cannot be pushed down to the shards ("Limit clause is
-- currently unsupported when a lateral subquery references a column from ... local tables").
-- As PL/pgSQL they are opaque to the planner: the calling query stays on the coordinator's
-- tables, and each call is one router query to the one shard that holds the series (its plan
-- cached after the first calls), the same index probe as on plain PostgreSQL.
CREATE FUNCTION samples_first(p_series integer, p_from timestamptz, p_until timestamptz,
                              p_count integer)
RETURNS TABLE (ts timestamptz, value double precision)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT x.ts, x.value FROM samples x
    WHERE x.series_id = p_series AND x.ts >= p_from AND x.ts < p_until
    ORDER BY x.ts, x.value LIMIT p_count;
END $$;

CREATE FUNCTION samples_last(p_series integer, p_from timestamptz, p_until timestamptz,
                             p_count integer)
RETURNS TABLE (ts timestamptz, value double precision)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT x.ts, x.value FROM samples x
    WHERE x.series_id = p_series AND x.ts >= p_from AND x.ts < p_until
    ORDER BY x.ts DESC, x.value DESC LIMIT p_count;
END $$;
