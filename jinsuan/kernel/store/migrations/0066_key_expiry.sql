-- An API key may be made to expire: past expires_at it is refused as a revoked one is.
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
