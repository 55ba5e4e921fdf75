-- The sampling interval the agent declares for each series (its batches' interval_s): a
-- series' gap limit is a multiple of it (docs/metering.md, "Coverage"), never an estimate from
-- the neighbouring readings, so more data can only raise an hour's coverage.
ALTER TABLE series ADD COLUMN interval_s double precision CHECK (interval_s > 0);
