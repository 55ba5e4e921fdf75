-- What the one counter rule (jinsuan.kernel.counters) did to a site-hour's energy readings:
-- 'it_glitches' / 'facility_glitches' (low readings skipped because the counter came back),
-- '..._implausible' (rises faster than the meter's rated power, refused), '..._resets'
-- (counted from zero). Empty when every reading was taken as it came.
ALTER TABLE rollup_site_hourly ADD COLUMN quality text[] NOT NULL DEFAULT '{}';
