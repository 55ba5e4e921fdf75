-- Usage a site cannot inflate: a run keeps what its site claimed beside what the platform bills,
-- and the last moment the platform heard the run alive (a heartbeat naming it, or its running
-- report), which is where a lost or cancelled run's metering ends.
ALTER TABLE runs
    ADD COLUMN claimed_started_at timestamptz,
    ADD COLUMN claimed_ended_at timestamptz,
    ADD COLUMN last_heard_at timestamptz;
UPDATE runs SET last_heard_at = coalesce(ended_at, started_at, leased_at);

-- On each record: the site's claims, and why the billed times differ from them ('' when they
-- do not). A record of a run that ended without a site's report says how it was ended.
ALTER TABLE usage_records
    ADD COLUMN claimed_started_at timestamptz,
    ADD COLUMN claimed_ended_at timestamptz,
    ADD COLUMN bounded_by text NOT NULL DEFAULT '';
