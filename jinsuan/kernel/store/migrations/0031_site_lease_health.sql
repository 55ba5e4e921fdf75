-- Runs a site lost in a row without a single event from it (see scheduler.cycle.expire_run):
-- its agent took leases, or let them lapse, but its executor ran nothing. Placement holds such
-- a site back (scheduler.placement); any event from one of the site's runs resets the count.
-- Whether its agents still ask for work, and with which executor, is agent_leases.
CREATE TABLE site_lease_health (
    site_id        bigint PRIMARY KEY REFERENCES sites,
    silent_losses  integer NOT NULL DEFAULT 0 CHECK (silent_losses >= 0),
    last_loss_at   timestamptz
);
