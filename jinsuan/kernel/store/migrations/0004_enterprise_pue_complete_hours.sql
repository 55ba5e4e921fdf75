-- An enterprise's PUE counts only site-hours where both energies were measured: summing a
-- site-hour's facility energy without its IT energy (or the reverse) would bias the ratio.
-- The energy sums themselves still include every site-hour.
CREATE OR REPLACE VIEW rollup_enterprise_hourly AS
SELECT s.enterprise_id,
       r.hour,
       sum(r.it_kwh) AS it_kwh,
       sum(r.facility_kwh) AS facility_kwh,
       sum(r.facility_kwh) FILTER (WHERE r.it_kwh IS NOT NULL AND r.facility_kwh IS NOT NULL)
           / NULLIF(sum(r.it_kwh) FILTER (WHERE r.it_kwh IS NOT NULL
                                          AND r.facility_kwh IS NOT NULL), 0) AS pue,
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
GROUP BY s.enterprise_id, r.hour;
