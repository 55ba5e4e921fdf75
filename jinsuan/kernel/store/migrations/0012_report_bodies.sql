-- The evidence behind each figure, kept (docs/metering.md, "Traceability"): every accepted
-- report's exact signed bytes, and on every sample the report that carried it, so that
-- `jinsuan evidence verify` can check each signature again and each sample against what was
-- signed, from the store alone.

-- A compact key for a report, for samples to name it by (the primary key is text and bigint).
-- Adding it rewrites the reports table once.
ALTER TABLE reports ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE reports ADD CONSTRAINT reports_id_key UNIQUE (id);

-- The report that carried each sample; NULL for samples stored before this migration (or
-- written by anything but the intake). No foreign key: one check per sample would cost ingest
-- what `jinsuan evidence verify` checks anyway. What it costs is in docs/performance.md.
ALTER TABLE samples ADD COLUMN report_id bigint;

-- One gzip member whose content is exactly the bytes the agent signed: what the agent sent
-- when it sent gzip, else compressed by the intake. first_ts and last_ts are the first and last
-- sample it carried (its receipt time for a report without samples). Retention deletes a body
-- once last_ts is older than the raw samples kept, with them (collectors/evidence.py).
CREATE TABLE report_bodies (
    report_id  bigint PRIMARY KEY REFERENCES reports (id),
    first_ts   timestamptz NOT NULL,
    last_ts    timestamptz NOT NULL,
    body       bytea NOT NULL
);
-- Already compressed: TOAST should store it out of line without trying to compress it again.
ALTER TABLE report_bodies ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE INDEX report_bodies_last_ts ON report_bodies (last_ts);
