-- Placements per hour and per UTC day, site and tenant, kept by a trigger as runs are written
-- (a run's placed_at, site and tenant never change), so the "Placements by site/city" panels
-- read whole hours or days from these instead of every run of the range (docs/performance.md),
-- following rollup_source(): runs up to a day, hours up to 31 days, days beyond.
CREATE TABLE rollup_placements_hourly (
    hour        timestamptz NOT NULL,
    site_id     bigint NOT NULL,
    tenant      text NOT NULL,
    placements  integer NOT NULL,
    PRIMARY KEY (hour, site_id, tenant) INCLUDE (placements)
);

CREATE TABLE rollup_placements_daily (
    day         timestamptz NOT NULL,
    site_id     bigint NOT NULL,
    tenant      text NOT NULL,
    placements  integer NOT NULL,
    PRIMARY KEY (day, site_id, tenant) INCLUDE (placements)
);

CREATE FUNCTION count_placement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rollup_placements_hourly (hour, site_id, tenant, placements)
    VALUES (date_bin('1 hour', NEW.placed_at, timestamptz '2000-01-01 00:00+00'), NEW.site_id,
            NEW.tenant, 1)
    ON CONFLICT (hour, site_id, tenant)
    DO UPDATE SET placements = rollup_placements_hourly.placements + 1;
    INSERT INTO rollup_placements_daily (day, site_id, tenant, placements)
    VALUES (date_bin('1 day', NEW.placed_at, timestamptz '2000-01-01 00:00+00'), NEW.site_id,
            NEW.tenant, 1)
    ON CONFLICT (day, site_id, tenant)
    DO UPDATE SET placements = rollup_placements_daily.placements + 1;
    RETURN NULL;
END $$;
CREATE TRIGGER runs_count_placement AFTER INSERT ON runs
    FOR EACH ROW EXECUTE FUNCTION count_placement();

INSERT INTO rollup_placements_hourly (hour, site_id, tenant, placements)
SELECT date_bin('1 hour', placed_at, timestamptz '2000-01-01 00:00+00'), site_id, tenant,
       count(*)
FROM runs GROUP BY 1, 2, 3;
INSERT INTO rollup_placements_daily (day, site_id, tenant, placements)
SELECT date_bin('1 day', placed_at, timestamptz '2000-01-01 00:00+00'), site_id, tenant,
       count(*)
FROM runs GROUP BY 1, 2, 3;

-- How a long-range panel splits its range [p_from, p_to) by rollup_source(): the whole buckets
-- of the rollup's grain (an hour up to 31 days, a day beyond), [lo, hi), are read from the
-- rollup, the edges [p_from, lo) and [hi, p_to) from the raw rows; a short range ('raw') is
-- all edge (lo = hi = p_to). The bucket width is at least the grain.
CREATE FUNCTION rollup_window(p_from timestamptz, p_to timestamptz, p_bucket_s double precision)
RETURNS TABLE (source text, width interval, lo timestamptz, hi timestamptz)
LANGUAGE sql IMMUTABLE AS $$
    SELECT s.name,
           make_interval(secs => greatest(p_bucket_s, coalesce(extract(epoch FROM g.step), 0))),
           CASE WHEN g.step IS NULL THEN p_to
                ELSE greatest(p_from, least(p_to, date_bin(g.step,
                     p_from + g.step - interval '1 microsecond',
                     timestamptz '2000-01-01 00:00+00'))) END,
           CASE WHEN g.step IS NULL THEN p_to
                ELSE greatest(p_from, least(p_to, date_bin(g.step, p_to,
                     timestamptz '2000-01-01 00:00+00'))) END
    FROM (SELECT rollup_source(p_from, p_to) AS name) s
    CROSS JOIN LATERAL (SELECT CASE s.name WHEN 'raw' THEN NULL WHEN 'hourly'
                               THEN interval '1 hour' ELSE interval '1 day' END AS step) g
$$;

-- Placements in [p_from, p_to) per bucket of p_bucket_s seconds and site, split by
-- rollup_window(): whole hours or days from the rollups, the edges from the runs.
CREATE FUNCTION placement_points(p_from timestamptz, p_to timestamptz,
                                 p_bucket_s double precision, p_tenants text[],
                                 p_sites bigint[])
RETURNS TABLE (ts timestamptz, site_id bigint, placements bigint)
LANGUAGE sql STABLE AS $$
    WITH setting AS (
        SELECT * FROM rollup_window(p_from, p_to, p_bucket_s)
    ), counted AS (
        SELECT h.hour AS at, h.site_id, h.placements::bigint AS n
        FROM setting, rollup_placements_hourly h
        WHERE setting.source = 'hourly'
          AND h.hour >= setting.lo AND h.hour < greatest(setting.lo, setting.hi)
          AND h.tenant = ANY(p_tenants) AND h.site_id = ANY(p_sites)
        UNION ALL
        SELECT d.day, d.site_id, d.placements::bigint
        FROM setting, rollup_placements_daily d
        WHERE setting.source = 'daily'
          AND d.day >= setting.lo AND d.day < greatest(setting.lo, setting.hi)
          AND d.tenant = ANY(p_tenants) AND d.site_id = ANY(p_sites)
        UNION ALL  -- each edge a plain range of placed_at, so runs_placed_at serves it
        SELECT r.placed_at, r.site_id, 1 FROM runs r
        WHERE r.placed_at >= p_from AND r.placed_at < (SELECT lo FROM setting)
          AND r.tenant = ANY(p_tenants) AND r.site_id = ANY(p_sites)
        UNION ALL
        SELECT r.placed_at, r.site_id, 1 FROM runs r
        WHERE r.placed_at >= (SELECT greatest(lo, hi) FROM setting) AND r.placed_at < p_to
          AND r.tenant = ANY(p_tenants) AND r.site_id = ANY(p_sites)
    )
    SELECT date_bin(setting.width, c.at, timestamptz '1970-01-01 00:00+00'), c.site_id,
           sum(c.n)::bigint
    FROM counted c CROSS JOIN setting
    GROUP BY 1, 2
$$;
