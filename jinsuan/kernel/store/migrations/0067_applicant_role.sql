-- A key of the 'applicant' role belongs to a compute-voucher applicant (measure 9): its own
-- staff apply for vouchers and read its applications, vouchers and statements, without running
-- jobs (its dispatcher tenants do that, and draw on its vouchers).
ALTER TABLE api_keys ADD COLUMN applicant_id bigint REFERENCES voucher_applicants;
ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('operator', 'dispatcher', 'bureau', 'viewer', 'admin', 'metrics',
                    'applicant'));
ALTER TABLE api_keys ADD CONSTRAINT api_keys_applicant_owner
    CHECK ((role = 'applicant') = (applicant_id IS NOT NULL));
