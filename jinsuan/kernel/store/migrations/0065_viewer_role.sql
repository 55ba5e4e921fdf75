-- The bureau's read-only staff ('viewer') apart from its reviewers ('bureau', who propose,
-- approve, settle and pay): a viewer key reads what the bureau reads and changes nothing.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('operator', 'dispatcher', 'bureau', 'viewer', 'admin', 'metrics'));
