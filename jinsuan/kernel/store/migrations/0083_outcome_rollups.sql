-- Job ends per hour and per UTC day, tenant, site and end state, kept by triggers as a job
-- ends (a job ends once: ended_at is set once and never changed) or is written already ended
-- (counted at the site its last run has then), so the "Job outcomes" panel
-- reads whole hours or days over long ranges instead of every job end (docs/performance.md).
-- The site is the one the job's last run ran at, else the site it was pinned to, else 0 (ended
-- in the queue, never placed nor pinned): the panel counts those only when every site is
-- chosen, as it did reading the jobs.
CREATE TABLE rollup_outcomes_hourly (
    hour     timestamptz NOT NULL,
    site_id  bigint NOT NULL,
    tenant   text NOT NULL,
    state    text NOT NULL,
    jobs     integer NOT NULL,
    PRIMARY KEY (hour, site_id, tenant, state) INCLUDE (jobs)
);

CREATE TABLE rollup_outcomes_daily (
    day      timestamptz NOT NULL,
    site_id  bigint NOT NULL,
    tenant   text NOT NULL,
    state    text NOT NULL,
    jobs     integer NOT NULL,
    PRIMARY KEY (day, site_id, tenant, state) INCLUDE (jobs)
);

CREATE FUNCTION job_end_site(p_run text, p_constraints text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT r.site_id FROM runs r WHERE r.id = p_run),
                    (SELECT pin.id FROM sites pin WHERE pin.name = p_constraints::jsonb ->> 'site'),
                    0)
$$;

CREATE FUNCTION count_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    site bigint := job_end_site(NEW.current_run_id, NEW.constraints);
BEGIN
    INSERT INTO rollup_outcomes_hourly (hour, site_id, tenant, state, jobs)
    VALUES (date_bin('1 hour', NEW.ended_at, timestamptz '2000-01-01 00:00+00'), site,
            NEW.tenant, NEW.state, 1)
    ON CONFLICT (hour, site_id, tenant, state)
    DO UPDATE SET jobs = rollup_outcomes_hourly.jobs + 1;
    INSERT INTO rollup_outcomes_daily (day, site_id, tenant, state, jobs)
    VALUES (date_bin('1 day', NEW.ended_at, timestamptz '2000-01-01 00:00+00'), site,
            NEW.tenant, NEW.state, 1)
    ON CONFLICT (day, site_id, tenant, state)
    DO UPDATE SET jobs = rollup_outcomes_daily.jobs + 1;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_count_outcome AFTER UPDATE OF ended_at ON jobs
    FOR EACH ROW WHEN (OLD.ended_at IS NULL AND NEW.ended_at IS NOT NULL)
    EXECUTE FUNCTION count_outcome();
CREATE TRIGGER jobs_count_outcome_inserted AFTER INSERT ON jobs  -- a job copied in, ended
    FOR EACH ROW WHEN (NEW.ended_at IS NOT NULL)
    EXECUTE FUNCTION count_outcome();

INSERT INTO rollup_outcomes_hourly (hour, site_id, tenant, state, jobs)
SELECT date_bin('1 hour', ended_at, timestamptz '2000-01-01 00:00+00'),
       job_end_site(current_run_id, constraints), tenant, state, count(*)
FROM jobs WHERE ended_at IS NOT NULL GROUP BY 1, 2, 3, 4;
INSERT INTO rollup_outcomes_daily (day, site_id, tenant, state, jobs)
SELECT date_bin('1 day', ended_at, timestamptz '2000-01-01 00:00+00'),
       job_end_site(current_run_id, constraints), tenant, state, count(*)
FROM jobs WHERE ended_at IS NOT NULL GROUP BY 1, 2, 3, 4;

-- Jobs ended in [p_from, p_to) per bucket of p_bucket_s seconds and end state, for the sites
-- p_sites (0 among them: the jobs that never reached a site), split by rollup_window(): whole
-- hours or days from the rollups, the edges from the jobs.
CREATE FUNCTION outcome_points(p_from timestamptz, p_to timestamptz,
                               p_bucket_s double precision, p_tenants text[],
                               p_sites bigint[])
RETURNS TABLE (ts timestamptz, state text, jobs bigint)
LANGUAGE sql STABLE AS $$
    WITH setting AS (
        SELECT * FROM rollup_window(p_from, p_to, p_bucket_s)
    ), counted AS (
        SELECT h.hour AS at, h.state, h.jobs::bigint AS n
        FROM setting, rollup_outcomes_hourly h
        WHERE setting.source = 'hourly'
          AND h.hour >= setting.lo AND h.hour < greatest(setting.lo, setting.hi)
          AND h.tenant = ANY(p_tenants) AND h.site_id = ANY(p_sites)
        UNION ALL
        SELECT d.day, d.state, d.jobs::bigint
        FROM setting, rollup_outcomes_daily d
        WHERE setting.source = 'daily'
          AND d.day >= setting.lo AND d.day < greatest(setting.lo, setting.hi)
          AND d.tenant = ANY(p_tenants) AND d.site_id = ANY(p_sites)
        UNION ALL  -- each edge a plain range of ended_at, so jobs_ended_at serves it
        SELECT j.ended_at, j.state, 1 FROM jobs j
        WHERE j.ended_at >= p_from AND j.ended_at < (SELECT lo FROM setting)
          AND j.tenant = ANY(p_tenants)
          AND job_end_site(j.current_run_id, j.constraints) = ANY(p_sites)
        UNION ALL
        SELECT j.ended_at, j.state, 1 FROM jobs j
        WHERE j.ended_at >= (SELECT greatest(lo, hi) FROM setting) AND j.ended_at < p_to
          AND j.tenant = ANY(p_tenants)
          AND job_end_site(j.current_run_id, j.constraints) = ANY(p_sites)
    )
    SELECT date_bin(setting.width, c.at, timestamptz '1970-01-01 00:00+00'), c.state,
           sum(c.n)::bigint
    FROM counted c CROSS JOIN setting
    GROUP BY 1, 2
$$;
