-- Who is who: enterprises operate sites; API keys carry a role and an owner.
CREATE TABLE enterprises (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sites (
    id             bigserial PRIMARY KEY,
    enterprise_id  bigint NOT NULL REFERENCES enterprises,
    name           text NOT NULL UNIQUE,
    city           text NOT NULL,
    in_province    boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id             bigserial PRIMARY KEY,
    prefix         text NOT NULL UNIQUE,
    secret_sha256  bytea NOT NULL,
    role           text NOT NULL CHECK (role IN ('operator', 'dispatcher', 'bureau', 'admin')),
    enterprise_id  bigint REFERENCES enterprises,
    tenant         text,
    label          text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    CHECK ((role = 'operator') = (enterprise_id IS NOT NULL)),
    CHECK ((role = 'dispatcher') = (tenant IS NOT NULL))
);

-- One-time enrolment tokens: an operator creates one for a site, an agent spends it.
CREATE TABLE enrolment_tokens (
    token_sha256  bytea PRIMARY KEY,
    site_id       bigint NOT NULL REFERENCES sites,
    created_by    bigint REFERENCES api_keys,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz,
    agent_id      text
);

CREATE TABLE agents (
    id              text PRIMARY KEY,
    site_id         bigint NOT NULL REFERENCES sites,
    public_key      text NOT NULL,
    hostname        text NOT NULL,
    enrolled_at     timestamptz NOT NULL DEFAULT now(),
    last_seq        bigint NOT NULL DEFAULT 0,
    last_report_at  timestamptz,
    inventory_sha256 bytea,
    revoked_at      timestamptz
);

-- Every accepted report, once: the idempotency key and the audit trail behind each figure.
CREATE TABLE reports (
    agent_id     text NOT NULL REFERENCES agents,
    seq          bigint NOT NULL,
    created_at   timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    samples      integer NOT NULL,
    body_sha256  bytea NOT NULL,
    signature    text NOT NULL,
    PRIMARY KEY (agent_id, seq)
);

-- Inventory as last reported by the site's agents.
CREATE TABLE racks (
    site_id     bigint NOT NULL REFERENCES sites,
    id          text NOT NULL,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    PRIMARY KEY (site_id, id)
);

CREATE TABLE accelerators (
    site_id             bigint NOT NULL REFERENCES sites,
    uuid                text NOT NULL,
    model               text NOT NULL,
    vendor              text NOT NULL,
    domestic            boolean NOT NULL,
    rack                text,
    memory_total_bytes  bigint,
    fp16_tflops         double precision,
    fp16_estimated      boolean NOT NULL DEFAULT false,
    fp16_source         text NOT NULL DEFAULT '',
    first_seen          timestamptz NOT NULL,
    last_seen           timestamptz NOT NULL,
    PRIMARY KEY (site_id, uuid)
);

CREATE TABLE meters (
    site_id     bigint NOT NULL REFERENCES sites,
    id          text NOT NULL,
    role        text NOT NULL CHECK (role IN ('facility', 'it')),
    measures    text NOT NULL,
    racks       text[] NOT NULL DEFAULT '{}',
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    PRIMARY KEY (site_id, id)
);

-- A series is one metric of one device at one site; samples refer to it by id.
CREATE TABLE series (
    id       serial PRIMARY KEY,
    site_id  bigint NOT NULL REFERENCES sites,
    metric   text NOT NULL,
    device   text NOT NULL,
    UNIQUE (site_id, metric, device)
);

-- Hourly rollups. Energy in kWh as numeric so sums over a year stay exact.
CREATE TABLE rollup_site_hourly (
    site_id                bigint NOT NULL REFERENCES sites,
    hour                   timestamptz NOT NULL,
    it_kwh                 numeric,
    facility_kwh           numeric,
    pue                    numeric,
    fp16_pflops            double precision NOT NULL,
    accelerators           integer NOT NULL,
    racks                  integer NOT NULL,
    utilization            double precision,
    coverage_it            double precision NOT NULL,
    coverage_facility      double precision NOT NULL,
    coverage_accelerators  double precision NOT NULL,
    computed_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, hour)
);

CREATE VIEW rollup_enterprise_hourly AS
SELECT s.enterprise_id,
       r.hour,
       sum(r.it_kwh) AS it_kwh,
       sum(r.facility_kwh) AS facility_kwh,
       sum(r.facility_kwh) / NULLIF(sum(r.it_kwh), 0) AS pue,
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

-- Rollups are incremental: hours up to the watermark are closed; late data marks an hour dirty.
CREATE TABLE rollup_state (
    site_id    bigint PRIMARY KEY REFERENCES sites,
    watermark  timestamptz NOT NULL
);

CREATE TABLE rollup_dirty (
    site_id    bigint NOT NULL REFERENCES sites,
    hour       timestamptz NOT NULL,
    marked_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (site_id, hour)
);

CREATE TABLE rollup_runs (
    id           bigserial PRIMARY KEY,
    holder       text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz,
    hours        integer NOT NULL DEFAULT 0
);
