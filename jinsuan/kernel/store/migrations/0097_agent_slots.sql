-- How many more runs each agent takes, as its latest lease request said (free_slots), less the
-- runs leased to it since (scheduler/leases.py). Placement reads it every cycle
-- (scheduler/snapshot.py) so that a site whose agents take no more runs gets none that would
-- wait there, placed, until their lease lapses. NULL for a row written before: unknown, no cap.
ALTER TABLE agent_leases ADD COLUMN free_slots integer CHECK (free_slots >= 0);
