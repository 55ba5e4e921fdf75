-- The scheduling dashboard over long ranges: a maintained hourly series of queue time instead of
-- a window over every job transition of the range, and indexes for the event panels.

-- When a job was alive, as a range ([submitted, ended), open while it has not ended); a GiST
-- index on it finds the jobs alive at a moment or in a range without reading the others. An
-- end before the submission (never written by the platform) is read as an empty lifetime
-- rather than refusing the row.
CREATE FUNCTION job_lifetime(submitted timestamptz, ended timestamptz) RETURNS tstzrange
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT tstzrange(submitted, CASE WHEN ended IS NULL THEN NULL
                                     ELSE greatest(submitted, ended) END, '[)')
$$;
CREATE INDEX jobs_lifetime ON jobs USING gist (job_lifetime(submitted_at, ended_at));

-- Every state span of every job alive in [p_from, p_to) that overlaps it: its state, from when
-- until when (NULL: still in it), and its site (the run's, else the site the job is pinned to,
-- else 0: not placed and not pinned).
CREATE FUNCTION job_spans(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (job_id text, tenant text, state text, site_id bigint, since timestamptz,
               until timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT j.id, j.tenant, t.to_state, coalesce(r.site_id, pin.id, 0), t.at, t.until
    FROM jobs j
    CROSS JOIN LATERAL (
        SELECT x.to_state, x.run_id, x.at, lead(x.at) OVER (ORDER BY x.id) AS until
        FROM job_transitions x WHERE x.job_id = j.id
    ) t
    LEFT JOIN runs r ON r.id = t.run_id
    LEFT JOIN sites pin ON pin.name = j.constraints::jsonb ->> 'site'
    WHERE job_lifetime(j.submitted_at, j.ended_at) && tstzrange(p_from, p_to, '[)')
      AND t.at < p_to AND (t.until IS NULL OR t.until > p_from)
$$;

-- Seconds spent queued per closed hour, tenant and site (0: none): the queue depth of an hour is
-- queued_s / 3600. Written by roll_queue_hour() for each hour once it has closed
-- (collectors.queue_rollup, at the end of each rollup run); rollup_queue_state.watermark is the
-- first hour not yet written.
CREATE TABLE rollup_queue_hourly (
    hour      timestamptz NOT NULL,
    tenant    text NOT NULL,
    site_id   bigint NOT NULL,
    queued_s  double precision NOT NULL,
    PRIMARY KEY (hour, tenant, site_id) INCLUDE (queued_s)
);

CREATE TABLE rollup_queue_state (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    watermark  timestamptz NOT NULL
);

CREATE FUNCTION roll_queue_hour(p_hour timestamptz) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM rollup_queue_hourly WHERE hour = p_hour;
    INSERT INTO rollup_queue_hourly (hour, tenant, site_id, queued_s)
    SELECT p_hour, s.tenant, s.site_id,
           sum(extract(epoch FROM least(coalesce(s.until, p_hour + interval '1 hour'),
                                        p_hour + interval '1 hour')
                                  - greatest(s.since, p_hour)))
    FROM job_spans(p_hour, p_hour + interval '1 hour') s
    WHERE s.state = 'queued'
    GROUP BY s.tenant, s.site_id;
$$;

-- The mean queue depth per tenant in buckets of p_bucket_s seconds over [p_from, p_to), for the
-- given tenants and sites (site 0 in p_sites: jobs neither placed nor pinned). A bucket's depth
-- is the job-seconds spent queued in it over its length (clipped to the range). Where
-- rollup_source() says raw it is computed from the job spans; otherwise buckets are at least an
-- hour,
-- whole closed hours come from rollup_queue_hourly and only the part-hours at the range's ends
-- and the hours not yet rolled up from the spans: the same figure, from a bounded read.
CREATE FUNCTION queue_depth_points(p_from timestamptz, p_to timestamptz,
                                   p_bucket_s double precision, p_tenants text[],
                                   p_sites bigint[])
RETURNS TABLE (ts timestamptz, tenant text, depth double precision)
LANGUAGE sql STABLE AS $$
    WITH setting AS (
        SELECT w.width,
               CASE WHEN long THEN greatest(p_from, least(p_to, date_bin('1 hour',
                    p_from + interval '1 hour' - interval '1 microsecond',
                    timestamptz '2000-01-01 00:00+00'))) ELSE p_to END AS lo,
               CASE WHEN long THEN greatest(p_from, least(p_to,
                    date_bin('1 hour', p_to, timestamptz '2000-01-01 00:00+00'),
                    coalesce((SELECT watermark FROM rollup_queue_state), p_from))) ELSE p_to
               END AS hi
        FROM (SELECT rollup_source(p_from, p_to) <> 'raw' AS long) l
        CROSS JOIN LATERAL (SELECT make_interval(secs => CASE WHEN long
                            THEN greatest(p_bucket_s, 3600) ELSE p_bucket_s END) AS width) w
    ), whole AS (
        SELECT h.hour AS since, h.hour + interval '1 hour' AS until, h.tenant, h.queued_s
        FROM setting, rollup_queue_hourly h
        WHERE h.hour >= setting.lo AND h.hour < greatest(setting.lo, setting.hi)
          AND h.tenant = ANY(p_tenants) AND h.site_id = ANY(p_sites)
    ), edges AS (
        SELECT e.since, e.until FROM setting,
        LATERAL (VALUES (p_from, setting.lo), (greatest(setting.lo, setting.hi), p_to)) e(since,
                                                                                     until)
        WHERE e.until > e.since
    ), waiting AS (
        SELECT s.tenant, greatest(s.since, e.since) AS since,
               least(coalesce(s.until, e.until), e.until) AS until
        FROM edges e
        CROSS JOIN LATERAL job_spans(e.since, e.until) s
        WHERE s.state = 'queued' AND s.tenant = ANY(p_tenants) AND s.site_id = ANY(p_sites)
    ), piece AS (
        SELECT w.tenant, b.at,
               extract(epoch FROM least(w.until, b.at + setting.width) - greatest(w.since, b.at))
                   AS seconds
        FROM waiting w CROSS JOIN setting CROSS JOIN LATERAL generate_series(
            date_bin(setting.width, w.since, timestamptz '1970-01-01 00:00+00'),
            w.until - interval '1 microsecond', setting.width) AS b(at)
        WHERE w.until > w.since
        UNION ALL
        SELECT h.tenant, date_bin(setting.width, h.since, timestamptz '1970-01-01 00:00+00'),
               h.queued_s
        FROM whole h CROSS JOIN setting
    ), bucket AS (
        SELECT b.at, extract(epoch FROM least(b.at + setting.width, p_to) - greatest(b.at, p_from))
                         AS seconds
        FROM setting CROSS JOIN LATERAL generate_series(
            date_bin(setting.width, p_from, timestamptz '1970-01-01 00:00+00'),
            p_to - interval '1 microsecond', setting.width) AS b(at)
    )
    SELECT b.at, t.tenant, coalesce(sum(p.seconds), 0) / b.seconds
    FROM bucket b
    CROSS JOIN (SELECT DISTINCT piece.tenant FROM piece) t
    LEFT JOIN piece p ON p.at = b.at AND p.tenant = t.tenant
    GROUP BY b.at, b.seconds, t.tenant
$$;

-- The event panels (placements, waits, outcomes, requeues, usage) select by time first. A run
-- carries its job's tenant and submission time, copied when it is placed (both are fixed for a
-- job's life), so that the panels filter by tenant and measure waits from the runs' index alone
-- instead of joining every job of the range.
ALTER TABLE runs ADD COLUMN tenant text, ADD COLUMN submitted_at timestamptz;
UPDATE runs r SET tenant = j.tenant, submitted_at = j.submitted_at FROM jobs j
WHERE j.id = r.job_id;
ALTER TABLE runs ALTER COLUMN tenant SET NOT NULL, ALTER COLUMN submitted_at SET NOT NULL;
CREATE INDEX runs_placed_at ON runs (placed_at)
    INCLUDE (tenant, site_id, attempt, submitted_at);
CREATE INDEX runs_ended_badly ON runs (ended_at) INCLUDE (tenant, site_id, job_id)
    WHERE state IN ('lost', 'failed');
CREATE INDEX jobs_ended_at ON jobs (ended_at) INCLUDE (tenant, state, current_run_id)
    WHERE ended_at IS NOT NULL;
CREATE INDEX usage_records_ended_at ON usage_records (ended_at)
    INCLUDE (tenant, site_id, job_id, accelerator_hours, fp16_pflop_hours, energy_kwh,
             cost_yuan);
