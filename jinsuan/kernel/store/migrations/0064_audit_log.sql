-- The audit log (jinsuan/kernel/audit.py): every state-changing API call, append-only like the
-- ledger, by privilege and by trigger. The ledger's refusal trigger becomes the one for both.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    request_id  text NOT NULL,
    key_id      bigint REFERENCES api_keys,
    key_prefix  text,  -- as presented: a refused key's prefix too, never its secret
    role        text,
    method      text NOT NULL,
    path        text NOT NULL,
    query       text NOT NULL,
    status      integer NOT NULL,
    client      text
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_key ON audit_log (key_prefix, id);

ALTER FUNCTION ledger_refuse_change() RENAME TO refuse_change;
CREATE OR REPLACE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC, CURRENT_USER;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
