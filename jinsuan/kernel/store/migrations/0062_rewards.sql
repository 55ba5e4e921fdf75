-- Rewards (rewards/): declared facts, the register of other support, assessments with their
-- frozen inputs, and awards moving proposed -> approved -> paid, each step a ledger entry.

-- A fact the agents cannot measure (a commissioning date, an investment, a revenue share...),
-- declared by an operator with references to its evidence, accepted or rejected by the bureau.
CREATE TABLE reward_declarations (
    id             bigserial PRIMARY KEY,
    enterprise_id  bigint NOT NULL REFERENCES enterprises,
    data_centre    text,
    kind           text NOT NULL,
    value          jsonb NOT NULL,
    evidence       jsonb NOT NULL,  -- [{"name": "验收报告.pdf", "sha256": "..."}]
    declared_by    bigint REFERENCES api_keys,
    declared_at    timestamptz NOT NULL DEFAULT now(),
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'accepted', 'rejected')),
    reviewed_by    bigint REFERENCES api_keys,
    reviewed_at    timestamptz,
    reason         text,
    CHECK ((status = 'pending') = (reviewed_at IS NULL))
);

-- Support already given by another provincial fund (同一申报主体同一内容不重复支持).
CREATE TABLE reward_other_support (
    id             bigserial PRIMARY KEY,
    enterprise_id  bigint NOT NULL REFERENCES enterprises,
    measure        text NOT NULL,
    fund           text NOT NULL,
    amount         numeric(14, 2) NOT NULL CHECK (amount >= 0),
    granted_on     date NOT NULL,
    recorded_by    bigint REFERENCES api_keys,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);

-- One run of a measure's calculation for a year: the inputs exactly as used (and their digest),
-- the policy file's version and hash, the code's version, and every award computed.
CREATE TABLE reward_assessments (
    id              bigserial PRIMARY KEY,
    year            integer NOT NULL,
    measure         text NOT NULL,
    policy_id       text NOT NULL,
    policy_version  integer NOT NULL,
    policy_sha256   char(64) NOT NULL,
    policy_text     text NOT NULL,
    code_version    text NOT NULL,
    inputs_sha256   char(64) NOT NULL,
    inputs          jsonb NOT NULL,
    created_by      bigint REFERENCES api_keys,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (year, measure, inputs_sha256, policy_sha256, code_version)
);

CREATE TABLE reward_awards (
    id              bigserial PRIMARY KEY,
    assessment_id   bigint NOT NULL REFERENCES reward_assessments,
    measure         text NOT NULL,
    year            integer NOT NULL,
    enterprise_id   bigint NOT NULL REFERENCES enterprises,
    data_centre     text,
    amount          numeric(14, 2) NOT NULL CHECK (amount >= 0),
    eligible        boolean NOT NULL,
    detail          jsonb NOT NULL,  -- rewards.inputs.Award: reasons, figures, assumptions
    -- the step reached; the ledger holds each step as an entry, this is where it stands
    state           text NOT NULL DEFAULT 'assessed'
                    CHECK (state IN ('assessed', 'proposed', 'approved', 'paid')),
    proposed_by     bigint REFERENCES api_keys,
    approved_by     bigint REFERENCES api_keys,
    payment_reference text,
    CHECK (approved_by IS NULL OR approved_by <> proposed_by)
);
CREATE INDEX reward_awards_by_year ON reward_awards (year, measure, enterprise_id);

-- A paid award is never edited; an assessed one changes only its state and who moved it.
CREATE FUNCTION reward_awards_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR OLD.state = 'paid'
       OR (OLD.assessment_id, OLD.measure, OLD.year, OLD.enterprise_id, OLD.data_centre,
           OLD.amount, OLD.eligible, OLD.detail)
          IS DISTINCT FROM (NEW.assessment_id, NEW.measure, NEW.year, NEW.enterprise_id,
                            NEW.data_centre, NEW.amount, NEW.eligible, NEW.detail) THEN
        RAISE EXCEPTION 'award %: an award''s figures are never edited, and a paid award not at'
            ' all; post an adjustment', OLD.id USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER reward_awards_guard BEFORE UPDATE OR DELETE ON reward_awards
    FOR EACH ROW EXECUTE FUNCTION reward_awards_guard();

-- A correction of an approved or paid award: a new amount, signed, with its reason; the
-- difference is posted to the ledger.
CREATE TABLE reward_adjustments (
    id          bigserial PRIMARY KEY,
    award_id    bigint NOT NULL REFERENCES reward_awards,
    delta       numeric(14, 2) NOT NULL CHECK (delta <> 0),
    reason      text NOT NULL CHECK (reason <> ''),
    made_by     bigint REFERENCES api_keys,
    made_at     timestamptz NOT NULL DEFAULT now()
);
