-- Placements per hour, site and tenant, kept by a trigger as runs are written (a run's
-- placed_at, site and tenant never change), so the "Placements by site/city" panels read at
-- most 8,760 rows a site a year instead of every run of the range (docs/performance.md).
CREATE TABLE rollup_placements_hourly (
    hour        timestamptz NOT NULL,
    site_id     bigint NOT NULL,
    tenant      text NOT NULL,
    placements  integer NOT NULL,
    PRIMARY KEY (hour, site_id, tenant) INCLUDE (placements)
);

CREATE FUNCTION count_placement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rollup_placements_hourly (hour, site_id, tenant, placements)
    VALUES (date_bin('1 hour', NEW.placed_at, timestamptz '2000-01-01 00:00+00'), NEW.site_id,
            NEW.tenant, 1)
    ON CONFLICT (hour, site_id, tenant)
    DO UPDATE SET placements = rollup_placements_hourly.placements + 1;
    RETURN NULL;
END $$;
CREATE TRIGGER runs_count_placement AFTER INSERT ON runs
    FOR EACH ROW EXECUTE FUNCTION count_placement();

INSERT INTO rollup_placements_hourly (hour, site_id, tenant, placements)
SELECT date_bin('1 hour', placed_at, timestamptz '2000-01-01 00:00+00'), site_id, tenant,
       count(*)
FROM runs GROUP BY 1, 2, 3;

-- Placements in [p_from, p_to) per bucket of p_bucket_s seconds and site: the whole hours
-- inside the range from the hourly table (buckets of at least an hour) when rollup_source()
-- says the range is long, the partial hours at its edges and short ranges from the runs.
CREATE FUNCTION placement_points(p_from timestamptz, p_to timestamptz,
                                 p_bucket_s double precision, p_tenants text[],
                                 p_sites bigint[])
RETURNS TABLE (ts timestamptz, site_id bigint, placements bigint)
LANGUAGE sql STABLE AS $$
    WITH setting AS (
        SELECT w.width,
               CASE WHEN long THEN greatest(p_from, least(p_to, date_bin('1 hour',
                    p_from + interval '1 hour' - interval '1 microsecond',
                    timestamptz '2000-01-01 00:00+00'))) ELSE p_to END AS lo,
               CASE WHEN long THEN greatest(p_from, least(p_to, date_bin('1 hour', p_to,
                    timestamptz '2000-01-01 00:00+00'))) ELSE p_to END AS hi
        FROM (SELECT rollup_source(p_from, p_to) <> 'raw' AS long) l
        CROSS JOIN LATERAL (SELECT make_interval(secs => CASE WHEN long
                            THEN greatest(p_bucket_s, 3600) ELSE p_bucket_s END) AS width) w
    ), counted AS (
        SELECT h.hour AS at, h.site_id, h.placements::bigint AS n
        FROM setting, rollup_placements_hourly h
        WHERE h.hour >= setting.lo AND h.hour < greatest(setting.lo, setting.hi)
          AND h.tenant = ANY(p_tenants) AND h.site_id = ANY(p_sites)
        UNION ALL
        SELECT r.placed_at, r.site_id, 1
        FROM setting, runs r
        WHERE ((r.placed_at >= p_from AND r.placed_at < setting.lo)
               OR (r.placed_at >= greatest(setting.lo, setting.hi) AND r.placed_at < p_to))
          AND r.tenant = ANY(p_tenants) AND r.site_id = ANY(p_sites)
    )
    SELECT date_bin(setting.width, c.at, timestamptz '1970-01-01 00:00+00'), c.site_id,
           sum(c.n)::bigint
    FROM counted c CROSS JOIN setting
    GROUP BY 1, 2
$$;
