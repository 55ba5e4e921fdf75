-- A key of the 'metrics' role may read the per-site figures at /metrics/sites and nothing else:
-- the credential a Prometheus scraper holds.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('operator', 'dispatcher', 'bureau', 'admin', 'metrics'));
