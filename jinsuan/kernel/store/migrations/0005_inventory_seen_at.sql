-- When the platform last wrote an agent's inventory. An unchanged inventory is written again
-- once this is older than collectors.writer.INVENTORY_REFRESH, so last_seen stays meaningful
-- (a device still reported is still seen) without an inventory write on every batch.
ALTER TABLE agents ADD COLUMN inventory_seen_at timestamptz;
