-- The money ledger: append-only, double-entry, hash-chained (jinsuan/contract/ledgerproof.py).
-- Every voucher issue, redemption, settlement, expiry, revocation, reversal and every reward
-- step is one row moving an amount from one account to another; balances are derived from it.
CREATE TABLE ledger_entries (
    seq           bigint PRIMARY KEY CHECK (seq > 0),
    at            timestamptz NOT NULL,
    kind          text NOT NULL,
    from_account  text NOT NULL,
    to_account    text NOT NULL CHECK (to_account <> from_account),
    amount        numeric(14, 2) NOT NULL CHECK (amount > 0),
    ref           jsonb NOT NULL,
    actor         text NOT NULL,
    prev          char(64) NOT NULL,
    sha256        char(64) NOT NULL UNIQUE
);
CREATE INDEX ledger_entries_from ON ledger_entries (from_account, seq);
CREATE INDEX ledger_entries_to ON ledger_entries (to_account, seq);

-- The chain's head: one row, locked by every append, so entries are numbered and chained in
-- one order whatever the number of platform processes (and a read-check-append, such as
-- "is enough left in the pool?", is atomic with the append).
CREATE TABLE ledger_head (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq     bigint NOT NULL,
    sha256  char(64) NOT NULL
);
INSERT INTO ledger_head (seq, sha256) VALUES (0, repeat('0', 64));

-- The platform's signatures over the chain's head (Ed25519, ledgerproof.checkpoint_message).
CREATE TABLE ledger_checkpoints (
    id         bigserial PRIMARY KEY,
    seq        bigint NOT NULL,
    head       char(64) NOT NULL,
    at         text NOT NULL,
    key_id     text NOT NULL,
    signature  text NOT NULL
);

-- Append-only, by privilege: no role may change or remove a row, the tables' owner (the role
-- the platform migrates and runs as) included, which could only give itself the right back by
-- a deliberate GRANT ...
REVOKE UPDATE, DELETE, TRUNCATE ON ledger_entries, ledger_checkpoints FROM PUBLIC, CURRENT_USER;

-- ... and by trigger, for the owner too. A superuser can still disable the trigger; what it
-- then changes breaks the chain or its signed checkpoints (docs/ledger.md).
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_checkpoints_append_only BEFORE UPDATE OR DELETE ON ledger_checkpoints
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_checkpoints_no_truncate BEFORE TRUNCATE ON ledger_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
