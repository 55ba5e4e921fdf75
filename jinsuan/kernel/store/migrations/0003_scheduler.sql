-- Scheduling: sites sell accelerator-hours, dispatchers submit jobs, each attempt is a run.

ALTER TABLE sites ADD COLUMN executor text
    CHECK (executor IN ('slurm', 'kubernetes', 'process'));

-- What a site charges, per accelerator model, per accelerator-hour, in yuan.
CREATE TABLE site_prices (
    site_id                    bigint NOT NULL REFERENCES sites,
    model                      text NOT NULL,
    yuan_per_accelerator_hour  numeric(12, 2) NOT NULL CHECK (yuan_per_accelerator_hour >= 0),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, model)
);

-- Fair-share weights; a tenant without a row weighs 1.
CREATE TABLE tenant_shares (
    tenant  text PRIMARY KEY,
    weight  numeric(10, 3) NOT NULL CHECK (weight > 0)
);

-- A job is what a dispatcher asked for; its state is the state of its latest run, or queued.
CREATE TABLE jobs (
    id                     text PRIMARY KEY,
    tenant                 text NOT NULL,
    project                text NOT NULL,
    name                   text NOT NULL DEFAULT '',
    spec                   jsonb NOT NULL,
    -- The placement-relevant part of the spec, as text so identical constraints parse once.
    constraints            text NOT NULL,
    tasks                  integer NOT NULL CHECK (tasks >= 1),
    accelerators_per_task  integer NOT NULL CHECK (accelerators_per_task >= 1),
    priority               integer NOT NULL DEFAULT 0,
    max_runtime_s          integer,
    retries                integer NOT NULL DEFAULT 0 CHECK (retries >= 0),
    state                  text NOT NULL CHECK (state IN ('queued', 'placed', 'leased', 'running',
                                                          'succeeded', 'failed', 'cancelled')),
    tries                  integer NOT NULL DEFAULT 0,
    current_run_id         text,
    submitted_at           timestamptz NOT NULL,
    state_changed_at       timestamptz NOT NULL,
    ended_at               timestamptz,
    end_reason             text
);
CREATE INDEX jobs_queue ON jobs (submitted_at) WHERE state = 'queued';
CREATE INDEX jobs_tenant ON jobs (tenant, submitted_at DESC);

-- One attempt at one job at one site (Armada's job run). The fencing token is new for every run
-- and is what an agent must quote to report on it.
CREATE SEQUENCE fencing_tokens;

CREATE TABLE runs (
    id                text PRIMARY KEY,
    job_id            text NOT NULL REFERENCES jobs,
    attempt           integer NOT NULL,
    site_id           bigint NOT NULL REFERENCES sites,
    model             text NOT NULL,
    accelerators      integer NOT NULL CHECK (accelerators >= 1),
    fencing_token     bigint NOT NULL UNIQUE,
    state             text NOT NULL CHECK (state IN ('placed', 'leased', 'running', 'succeeded',
                                                     'failed', 'cancelled', 'lost')),
    agent_id          text REFERENCES agents,
    lease_expires_at  timestamptz NOT NULL,
    placed_at         timestamptz NOT NULL,
    leased_at         timestamptz,
    started_at        timestamptz,
    ended_at          timestamptz,
    exit_code         integer,
    log_tail          text NOT NULL DEFAULT '',
    executor_ref      text,
    end_reason        text,
    UNIQUE (job_id, attempt)
);
-- Live runs hold capacity; this index serves both the capacity sum and the expiry sweep.
CREATE INDEX runs_live ON runs (site_id, state, lease_expires_at)
    WHERE state IN ('placed', 'leased', 'running');

-- Every state change of a job, with its time: the job's history.
CREATE TABLE job_transitions (
    id          bigserial PRIMARY KEY,
    job_id      text NOT NULL REFERENCES jobs,
    run_id      text,
    from_state  text,
    to_state    text NOT NULL,
    at          timestamptz NOT NULL,
    reason      text NOT NULL DEFAULT ''
);
CREATE INDEX job_transitions_job ON job_transitions (job_id, id);

-- Agents' lease heartbeats (the lease request doubles as the heartbeat).
CREATE TABLE agent_leases (
    agent_id       text PRIMARY KEY REFERENCES agents,
    executor       text NOT NULL,
    last_lease_at  timestamptz NOT NULL
);

-- Metered usage: one record per ended run; a correction is a further record that adjusts it.
CREATE TABLE usage_records (
    id                         bigserial PRIMARY KEY,
    run_id                     text NOT NULL REFERENCES runs,
    job_id                     text NOT NULL REFERENCES jobs,
    tenant                     text NOT NULL,
    project                    text NOT NULL,
    site_id                    bigint NOT NULL REFERENCES sites,
    model                      text NOT NULL,
    accelerators               integer NOT NULL,
    started_at                 timestamptz,
    ended_at                   timestamptz,
    accelerator_hours          numeric(18, 6) NOT NULL,
    fp16_pflop_hours           numeric(18, 6) NOT NULL,
    energy_kwh                 numeric(18, 6),
    energy_method              text NOT NULL,
    yuan_per_accelerator_hour  numeric(12, 2) NOT NULL,
    cost_yuan                  numeric(14, 2) NOT NULL,
    adjusts                    bigint REFERENCES usage_records,
    reason                     text NOT NULL DEFAULT '',
    recorded_at                timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX usage_one_original_per_run ON usage_records (run_id) WHERE adjusts IS NULL;
CREATE INDEX usage_tenant_time ON usage_records (tenant, ended_at);

CREATE FUNCTION usage_records_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'usage records are immutable; record an adjustment instead';
END $$;

CREATE TRIGGER usage_records_immutable BEFORE UPDATE OR DELETE ON usage_records
    FOR EACH ROW EXECUTE FUNCTION usage_records_immutable();

-- Pools held for waiting gang jobs by the latest placement cycle (see scheduler.placement).
CREATE TABLE pool_reservations (
    site_id         bigint NOT NULL REFERENCES sites,
    model           text NOT NULL,
    job_id          text NOT NULL REFERENCES jobs,
    expected_start  timestamptz,
    made_at         timestamptz NOT NULL,
    PRIMARY KEY (site_id, model)
);
