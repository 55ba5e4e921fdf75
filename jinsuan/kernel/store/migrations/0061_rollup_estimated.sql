-- The part of each hour's connected FP16 PFlops that rests on estimated peaks (a model the
-- catalogue has no datasheet figure for), so that rewards count measured nameplate capacity
-- apart from estimates (rewards/measures). Hours rolled up before this migration read 0.
ALTER TABLE rollup_site_hourly ADD COLUMN fp16_pflops_estimated double precision NOT NULL
    DEFAULT 0;
