-- The data centre a site belongs to. The policy counts racks and judges PUE per data centre
-- (measures 4 and 6); a site is where one agent reports, so one data centre may hold several
-- sites (halls metered apart, or tenants of a colocation building). A site given no data centre
-- (or an empty one) is one of its own, named after the site; the trigger gives the default
-- whichever way the row is inserted.
ALTER TABLE sites ADD COLUMN data_centre text;
UPDATE sites SET data_centre = name;
ALTER TABLE sites ALTER COLUMN data_centre SET NOT NULL;
CREATE INDEX sites_data_centre ON sites (data_centre);

CREATE FUNCTION sites_default_data_centre() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.data_centre := coalesce(nullif(NEW.data_centre, ''), NEW.name);
    RETURN NEW;
END $$;

CREATE TRIGGER sites_default_data_centre BEFORE INSERT ON sites
    FOR EACH ROW EXECUTE FUNCTION sites_default_data_centre();
