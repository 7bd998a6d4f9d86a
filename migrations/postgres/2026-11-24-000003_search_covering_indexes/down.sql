DROP INDEX ix_string_pk;
DROP INDEX ix_string_lookup;
CREATE INDEX ix_string_pk ON ix_string (resource_pk);
CREATE INDEX ix_string_lookup ON ix_string (res_type, param, norm);

DROP INDEX ix_token_lookup;
CREATE INDEX ix_token_lookup ON ix_token (res_type, param, code, system);

DROP INDEX ix_reference_pk;
DROP INDEX ix_reference_lookup;
DROP INDEX ix_reference_target;
CREATE INDEX ix_reference_pk ON ix_reference (resource_pk);
CREATE INDEX ix_reference_lookup ON ix_reference (res_type, param, target);
CREATE INDEX ix_reference_target ON ix_reference (target);

DROP INDEX ix_date_pk;
DROP INDEX ix_date_low;
DROP INDEX ix_date_high;
CREATE INDEX ix_date_pk ON ix_date (resource_pk);
CREATE INDEX ix_date_low ON ix_date (res_type, param, low);
CREATE INDEX ix_date_high ON ix_date (res_type, param, high);
ALTER TABLE ix_date DROP COLUMN wide;

DROP INDEX ix_number_pk;
DROP INDEX ix_number_lookup;
CREATE INDEX ix_number_pk ON ix_number (resource_pk);
CREATE INDEX ix_number_lookup ON ix_number (res_type, param, value);

DROP INDEX ix_quantity_pk;
DROP INDEX ix_quantity_lookup;
CREATE INDEX ix_quantity_pk ON ix_quantity (resource_pk);
CREATE INDEX ix_quantity_lookup ON ix_quantity (res_type, param, value);

DROP INDEX ix_uri_pk;
DROP INDEX ix_uri_lookup;
CREATE INDEX ix_uri_pk ON ix_uri (resource_pk);
CREATE INDEX ix_uri_lookup ON ix_uri (res_type, param, uri);

DROP INDEX ix_composite_pk;
DROP INDEX ix_composite_lookup;
CREATE INDEX ix_composite_pk ON ix_composite (resource_pk);
CREATE INDEX ix_composite_lookup ON ix_composite (res_type, param, code1);
