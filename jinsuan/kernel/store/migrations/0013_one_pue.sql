-- PUE over a period, defined once (docs/metering.md, "Longer periods"). Every SQL reader (the
-- enterprise view below, GET /v1/pue/annual, the scheduler's 24-hour figure, the energy
-- dashboard and the monthly report that reuses its queries) reads these, so that they agree on
-- which hours count:
--
--   PUE of a period = Σ facility kWh ÷ Σ IT kWh over the site-hours in which BOTH were measured
--   (ISO/IEC 30134-2), never a mean of hourly ratios; of a data centre, over its sites'.
--
-- Coverage is returned, never judged: how much coverage makes an hour "with gaps" is the
-- reader's threshold (collectors/annual.py FULL_COVERAGE, measure 4's full_coverage_hour).

-- The ratio. NULL without IT energy; a value below 1 is kept (it means the meters disagree).
CREATE FUNCTION pue_ratio(p_facility_kwh numeric, p_it_kwh numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_facility_kwh / NULLIF(p_it_kwh, 0)
$$;

-- Per site and hour: whether both roles were measured, and the energies a PUE sums (NULL
-- unless both were measured), with the hour's coverages and counter quality flags (0010), and
-- the site's enterprise and data centre: a data centre's hour (an enterprise's sites under one
-- data-centre name, as measure 4 judges it) is the sum of its sites' rows, measured when one of
-- them is, and each role's coverage is its least covered site's, as a site's is its least
-- covered meter's. Sites are LEFT JOINed (every row has its site) so that a reader naming no
-- site column, like the scheduler's, reads the rollup alone: the planner removes the join.
CREATE VIEW pue_site_hourly AS
SELECT r.site_id,
       s.enterprise_id,
       s.data_centre,
       r.hour,
       r.it_kwh IS NOT NULL AND r.facility_kwh IS NOT NULL AS measured,
       CASE WHEN r.facility_kwh IS NOT NULL THEN r.it_kwh END AS it_kwh,
       CASE WHEN r.it_kwh IS NOT NULL THEN r.facility_kwh END AS facility_kwh,
       r.coverage_it,
       r.coverage_facility,
       r.coverage_accelerators,
       r.quality
FROM rollup_site_hourly r
LEFT JOIN sites s ON s.id = r.site_id;

-- The enterprise view's PUE from the same definition (its energy columns still sum every
-- measurement, as before).
CREATE OR REPLACE VIEW rollup_enterprise_hourly AS
SELECT s.enterprise_id,
       r.hour,
       sum(r.it_kwh) AS it_kwh,
       sum(r.facility_kwh) AS facility_kwh,
       pue_ratio(sum(p.facility_kwh), sum(p.it_kwh)) AS pue,
       sum(r.fp16_pflops) AS fp16_pflops,
       sum(r.accelerators)::integer AS accelerators,
       sum(r.racks)::integer AS racks,
       sum(r.utilization * r.accelerators) / NULLIF(sum(r.accelerators), 0) AS utilization,
       min(r.coverage_it) AS coverage_it,
       min(r.coverage_facility) AS coverage_facility,
       min(r.coverage_accelerators) AS coverage_accelerators,
       count(*)::integer AS sites
FROM rollup_site_hourly r
JOIN sites s ON s.id = r.site_id
JOIN pue_site_hourly p ON p.site_id = r.site_id AND p.hour = r.hour
GROUP BY s.enterprise_id, r.hour;

-- The same figures over a range [p_from, p_to), per site, in the rows a long range can afford:
-- hour by hour up to 31 days (rollup_source's rule), and beyond that the whole UTC days of the
-- range from the daily site rollup's paired sums (rollup_site_daily, 0080: the same hours, kept
-- per day) plus the hours of the part-days at its ends. A period's PUE is
-- pue_ratio(sum(facility_kwh), sum(it_kwh)) over the rows of the sites it covers; hours of a UTC
-- day are bits (bit n: hour n), so that an hour measured at several sites of a data centre
-- counts once (bit_count(bit_or(hours_measured)::bit(24)) per day). Coverage columns are sums
-- over the row's hours (divide by ``hours`` for a mean); a day's rows do not say which of its
-- hours had gaps: a reader that counts them reads those hours from rollup_site_hourly.
--
-- rollup_source and rollup_site_daily come with migration 0080, after this one in a new
-- database: the body is checked when it first runs, not now (as pg_dump restores functions).
SET LOCAL check_function_bodies = off;
CREATE FUNCTION pue_site_range(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (site_id bigint, enterprise_id bigint, data_centre text,
               at timestamptz,  -- the start of the hour, or of the UTC day, the row covers
               day timestamptz,  -- the UTC day it falls in
               hours integer,  -- site-hours rolled up
               hours_present integer, hours_measured integer,  -- bits of the day's hours
               it_kwh numeric, facility_kwh numeric,  -- over the measured hours
               coverage_it double precision, coverage_facility double precision,
               coverage_accelerators double precision)
LANGUAGE sql STABLE AS $$
    SELECT h.site_id, h.enterprise_id, h.data_centre, h.hour,
           date_bin('1 day', h.hour, timestamptz '2000-01-01 00:00+00'), 1,
           1 << extract(hour FROM h.hour AT TIME ZONE 'UTC')::integer,
           CASE WHEN h.measured THEN 1 << extract(hour FROM h.hour AT TIME ZONE 'UTC')::integer
                ELSE 0 END,
           h.it_kwh, h.facility_kwh, h.coverage_it, h.coverage_facility,
           h.coverage_accelerators
    FROM pue_site_hourly h
    WHERE h.hour >= p_from AND h.hour < p_to
      AND (rollup_source(p_from, p_to) <> 'daily'
           -- beyond 31 days, only the part-days at the ends
           OR h.hour < date_bin('1 day', p_from + interval '24 hours' - interval '1 microsecond',
                                timestamptz '2000-01-01 00:00+00')
           OR h.hour >= date_bin('1 day', p_to, timestamptz '2000-01-01 00:00+00'))
    UNION ALL
    SELECT d.site_id, s.enterprise_id, s.data_centre, d.day, d.day, d.hours, d.hours_present,
           d.hours_paired, d.it_kwh_paired, d.facility_kwh_paired, d.coverage_it,
           d.coverage_facility, d.coverage_accelerators
    FROM rollup_site_daily d
    LEFT JOIN sites s ON s.id = d.site_id
    WHERE rollup_source(p_from, p_to) = 'daily'
      AND d.day >= date_bin('1 day', p_from + interval '24 hours' - interval '1 microsecond',
                            timestamptz '2000-01-01 00:00+00')
      AND d.day < date_bin('1 day', p_to, timestamptz '2000-01-01 00:00+00')
$$;
RESET check_function_bodies;
