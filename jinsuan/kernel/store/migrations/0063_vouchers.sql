-- Compute vouchers (算力券, measure 9): applicants, their tenants, contracts applied for,
-- vouchers issued from the year's pool, draws on them from metered usage, and settlements
-- with providers. Money moves only in the ledger (0060); these tables say what each entry is.

-- Providers are enterprises; their unified social credit code finds affiliations.
ALTER TABLE enterprises ADD COLUMN credit_code char(18) UNIQUE;

CREATE TABLE voucher_applicants (
    id           bigserial PRIMARY KEY,
    credit_code  char(18) NOT NULL UNIQUE,  -- validated (GB 32100-2015) before it is stored
    name         text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('company', 'university', 'research_institute')),
    in_province  boolean NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- A dispatcher tenant acts for one applicant: only its jobs can draw on the applicant's
-- vouchers.
CREATE TABLE voucher_applicant_tenants (
    tenant        text PRIMARY KEY,
    applicant_id  bigint NOT NULL REFERENCES voucher_applicants
);

-- Entities registered as affiliated (by credit code): neither may claim on the other's
-- contracts. Stored once per pair, the smaller code first.
CREATE TABLE voucher_affiliations (
    code_a       char(18) NOT NULL,
    code_b       char(18) NOT NULL,
    note         text NOT NULL,
    recorded_by  bigint REFERENCES api_keys,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (code_a, code_b),
    CHECK (code_a < code_b)
);

-- The other-support register (0062) also names applicants that are not enterprises here.
ALTER TABLE reward_other_support ALTER COLUMN enterprise_id DROP NOT NULL;
ALTER TABLE reward_other_support ADD COLUMN credit_code char(18);
ALTER TABLE reward_other_support ADD CONSTRAINT reward_other_support_whom
    CHECK (enterprise_id IS NOT NULL OR credit_code IS NOT NULL);

CREATE TABLE voucher_applications (
    id                bigserial PRIMARY KEY,
    applicant_id      bigint NOT NULL REFERENCES voucher_applicants,
    provider_id       bigint NOT NULL REFERENCES enterprises,
    contract_id       text NOT NULL,
    contract_amount   numeric(14, 2) NOT NULL CHECK (contract_amount > 0),
    starts_on         date NOT NULL,
    ends_on           date NOT NULL CHECK (ends_on >= starts_on),
    special           boolean NOT NULL,  -- leads a national major project or large-model R&D
    special_basis     text NOT NULL DEFAULT '',
    evidence          jsonb NOT NULL,
    submitted_by      bigint REFERENCES api_keys,
    submitted_at      timestamptz NOT NULL DEFAULT now(),
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'recommended', 'issued', 'declined')),
    recommended_by    bigint REFERENCES api_keys,
    decided_by        bigint REFERENCES api_keys,
    decided_at        timestamptz,
    reason            text NOT NULL DEFAULT '',
    UNIQUE (provider_id, contract_id),  -- one application per contract
    CHECK (decided_by IS NULL OR status <> 'issued' OR decided_by <> recommended_by)
);

CREATE TABLE vouchers (
    id              bigserial PRIMARY KEY,
    application_id  bigint NOT NULL UNIQUE REFERENCES voucher_applications,
    applicant_id    bigint NOT NULL REFERENCES voucher_applicants,
    provider_id     bigint NOT NULL REFERENCES enterprises,
    pool_year       integer NOT NULL,
    rate            numeric(4, 2) NOT NULL,
    face_value      numeric(14, 2) NOT NULL CHECK (face_value > 0),
    valid_from      date NOT NULL,
    valid_until     date NOT NULL,
    issued_at       timestamptz NOT NULL DEFAULT now(),
    state           text NOT NULL DEFAULT 'active'
                    CHECK (state IN ('active', 'expired', 'revoked')),
    ended_at        timestamptz,
    end_reason      text NOT NULL DEFAULT ''
);
CREATE INDEX vouchers_applicant ON vouchers (applicant_id, pool_year);

-- What each usage record of a job submitted with a voucher drew: an amount, or nothing and why.
CREATE TABLE voucher_draws (
    usage_record_id  bigint PRIMARY KEY REFERENCES usage_records,
    voucher_id       bigint NOT NULL,
    job_id           text NOT NULL REFERENCES jobs,
    amount           numeric(14, 2) NOT NULL,  -- < 0 for an adjustment that gives back
    reason           text NOT NULL,
    ledger_seq       bigint REFERENCES ledger_entries,
    drawn_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX voucher_draws_voucher ON voucher_draws (voucher_id, drawn_at);
CREATE INDEX voucher_draws_job ON voucher_draws (job_id);

-- A provider's statement for a period: the draws it covers, what the bureau owes, and its
-- payment.
CREATE TABLE voucher_settlements (
    id             bigserial PRIMARY KEY,
    provider_id    bigint NOT NULL REFERENCES enterprises,
    period_start   date NOT NULL,
    period_end     date NOT NULL,
    amount         numeric(14, 2) NOT NULL,
    created_by     bigint REFERENCES api_keys,
    created_at     timestamptz NOT NULL DEFAULT now(),
    paid_reference text,
    paid_by        bigint REFERENCES api_keys,
    paid_at        timestamptz,
    UNIQUE (provider_id, period_start)
);
ALTER TABLE voucher_draws ADD COLUMN settlement_id bigint REFERENCES voucher_settlements;

-- Clawbacks after fraud: which draws were reversed, by whom, why.
CREATE TABLE voucher_clawbacks (
    id           bigserial PRIMARY KEY,
    voucher_id   bigint NOT NULL REFERENCES vouchers,
    amount       numeric(14, 2) NOT NULL CHECK (amount > 0),
    reason       text NOT NULL CHECK (reason <> ''),
    made_by      bigint REFERENCES api_keys,
    made_at      timestamptz NOT NULL DEFAULT now()
);
