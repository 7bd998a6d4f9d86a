-- Search indexes that answer a search from the index alone (see src/store/search.rs):
--
-- * every lookup index ends with resource_pk, so a criterion's matches come out of the index
--   in primary key order (a first page stops after `_count` of them) and without reading the
--   table;
-- * every table's per-resource index is (resource_pk, param), so the other criteria of a
--   search are probed for one candidate at a time (EXISTS) instead of being materialised;
-- * dates hold both ends in both orders, so a range is tested inside the index.

DROP INDEX ix_string_pk;
DROP INDEX ix_string_lookup;
CREATE INDEX ix_string_pk ON ix_string (resource_pk, param);
CREATE INDEX ix_string_lookup ON ix_string (res_type, param, norm, resource_pk);

DROP INDEX ix_token_lookup;
CREATE INDEX ix_token_lookup ON ix_token (res_type, param, code, resource_pk, system);

DROP INDEX ix_reference_pk;
DROP INDEX ix_reference_lookup;
DROP INDEX ix_reference_target;
CREATE INDEX ix_reference_pk ON ix_reference (resource_pk, param);
CREATE INDEX ix_reference_lookup ON ix_reference (res_type, param, target, resource_pk);
CREATE INDEX ix_reference_target ON ix_reference (target, res_type, resource_pk);

-- `wide`: the range spans more than 31 days (a year, an open period). A narrow row's low end is
-- within 31 days of its high end, so a search bounding the high end bounds a narrow row's low
-- end too: the low index walks a bounded stretch for narrow rows, and the few wide ones apart.
ALTER TABLE ix_date ADD COLUMN wide BOOLEAN NOT NULL DEFAULT 0;
UPDATE ix_date SET wide = (high > low + 2678400000);
DROP INDEX ix_date_pk;
DROP INDEX ix_date_low;
DROP INDEX ix_date_high;
CREATE INDEX ix_date_pk ON ix_date (resource_pk, param);
CREATE INDEX ix_date_low ON ix_date (res_type, param, wide, low, high, resource_pk);
CREATE INDEX ix_date_high ON ix_date (res_type, param, high, low, wide, resource_pk);

DROP INDEX ix_number_pk;
DROP INDEX ix_number_lookup;
CREATE INDEX ix_number_pk ON ix_number (resource_pk, param);
CREATE INDEX ix_number_lookup ON ix_number (res_type, param, value, resource_pk);

DROP INDEX ix_quantity_pk;
DROP INDEX ix_quantity_lookup;
CREATE INDEX ix_quantity_pk ON ix_quantity (resource_pk, param);
CREATE INDEX ix_quantity_lookup ON ix_quantity (res_type, param, value, resource_pk);

DROP INDEX ix_uri_pk;
DROP INDEX ix_uri_lookup;
CREATE INDEX ix_uri_pk ON ix_uri (resource_pk, param);
CREATE INDEX ix_uri_lookup ON ix_uri (res_type, param, uri, resource_pk);

DROP INDEX ix_composite_pk;
DROP INDEX ix_composite_lookup;
CREATE INDEX ix_composite_pk ON ix_composite (resource_pk, param);
CREATE INDEX ix_composite_lookup ON ix_composite (res_type, param, code1, resource_pk);
