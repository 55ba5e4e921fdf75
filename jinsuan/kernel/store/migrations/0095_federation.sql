-- Federation (docs/federation.md): a platform forwards its sites' closed hours, signed, to a
-- higher-tier platform (collectors/federation.py), and a platform receives its lower tiers'
-- (collectors/federation_routes.py). Every platform has both halves; either may stay empty.

-- The lower tier. What the upper tier acknowledged, per site-hour: the rollup version
-- (computed_at, which the rollup changes exactly when the figures change), the digest of the
-- figures sent, and the upper tier's revision number and answer. A site-hour whose rollup row
-- has another computed_at than this is pending.
CREATE TABLE federation_outbox (
    site_id         bigint NOT NULL REFERENCES sites,
    hour            timestamptz NOT NULL,
    computed_at     timestamptz NOT NULL,
    figures_sha256  bytea NOT NULL,
    revision        integer NOT NULL,
    status          text NOT NULL CHECK (status IN ('stored', 'revised', 'duplicate', 'stale')),
    acked_at        timestamptz NOT NULL,
    PRIMARY KEY (site_id, hour)
);

-- The forwarder's one row: how far its scan of the rollups may start (every rollup row
-- computed before scanned_to was acknowledged; the scan starts an overlap earlier, for rollup
-- transactions that committed after it looked) and its back-off after failures.
CREATE TABLE federation_forwarder (
    id               boolean PRIMARY KEY DEFAULT true CHECK (id),
    scanned_to       timestamptz,
    failures         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    last_error       text,
    last_success_at  timestamptz
);
INSERT INTO federation_forwarder DEFAULT VALUES;

-- The forwarder reads recomputed hours by when they were computed.
CREATE INDEX rollup_site_hourly_computed_at ON rollup_site_hourly (computed_at);

-- The upper tier. Lower-tier platforms an admin registered, with the Ed25519 public key
-- (base64, raw 32 bytes) their batches are signed with.
CREATE TABLE federation_peers (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    public_key  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A peer's sites as it last described them (its site id as the key).
CREATE TABLE federated_sites (
    peer_id      bigint NOT NULL REFERENCES federation_peers,
    site_key     text NOT NULL,
    name         text NOT NULL,
    enterprise   text NOT NULL,
    credit_code  text,
    city         text NOT NULL,
    data_centre  text NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (peer_id, site_key)
);

-- Every version of a peer's site-hour ever received, never overwritten: revision 1 is the
-- first, each later one a recomputation the peer sent. The current version is the one the peer
-- computed last (computed_at). figures are the decimal strings as signed; body_sha256 names
-- the signed batch that carried the version.
CREATE TABLE federated_site_hourly (
    peer_id         bigint NOT NULL,
    site_key        text NOT NULL,
    hour            timestamptz NOT NULL,
    revision        integer NOT NULL CHECK (revision >= 1),
    computed_at     timestamptz NOT NULL,
    figures         jsonb NOT NULL,
    figures_sha256  bytea NOT NULL,
    provenance      jsonb NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    body_sha256     bytea NOT NULL,
    PRIMARY KEY (peer_id, site_key, hour, revision),
    FOREIGN KEY (peer_id, site_key) REFERENCES federated_sites
);
CREATE INDEX federated_site_hourly_hour ON federated_site_hourly (hour);
