-- Kept report bodies are recompressed once they age (collectors/evidence.py,
-- recompress_bodies): the gzip member an agent sent becomes an xz stream of the very same
-- signed bytes, about 0.6 of the size (docs/performance.md, "Storage per sample"). The codec
-- says how to read each body back; the signature and the SHA-256 recorded on receipt cover the
-- uncompressed bytes, so both still check.
ALTER TABLE report_bodies ADD COLUMN codec text NOT NULL DEFAULT 'gzip'
    CHECK (codec IN ('gzip', 'xz'));
CREATE INDEX report_bodies_gzip_last_ts ON report_bodies (last_ts) WHERE codec = 'gzip';
