-- Search index rows, one table per search parameter type (see DESIGN.md). Rows exist only for
-- current, live versions: they are written in the version's transaction and deleted when the
-- version stops being current. `param` is the search parameter's code; a few derived rows use
-- `code:modifier` (`code:text` for a token's display text, `subject:identifier` for a
-- reference's identifier), which no real code can collide with.

-- The order of a search without _sort: primary key within a type.
-- With is_current and deleted in it, a search tests membership without reading rows (bodies).
CREATE INDEX resource_version_type_pk ON resource_version (res_type, pk, is_current, deleted);

-- Strings: `norm` is lower-cased with Vietnamese (and all Latin) diacritics folded, for the
-- default prefix match and :contains; `exact` is the value as written, for :exact.
CREATE TABLE ix_string (
    resource_pk BIGINT NOT NULL,
    res_type    TEXT   NOT NULL,
    param       TEXT   NOT NULL,
    norm        TEXT   NOT NULL,
    exact       TEXT   NOT NULL
);
CREATE INDEX ix_string_pk ON ix_string (resource_pk);
CREATE INDEX ix_string_lookup ON ix_string (res_type, param, norm);

-- References: `target` is `Type/id` for a reference to a resource on this server (relative,
-- or absolute with this server's base), otherwise the absolute URL or canonical as written.
CREATE TABLE ix_reference (
    resource_pk BIGINT NOT NULL,
    res_type    TEXT   NOT NULL,
    param       TEXT   NOT NULL,
    target      TEXT   NOT NULL
);
CREATE INDEX ix_reference_pk ON ix_reference (resource_pk);
CREATE INDEX ix_reference_lookup ON ix_reference (res_type, param, target);
-- _revinclude, _has and $everything find what points at a resource.
CREATE INDEX ix_reference_target ON ix_reference (target);

-- Dates, instants and periods as the instant range [low, high) in ms since the epoch.
CREATE TABLE ix_date (
    resource_pk BIGINT NOT NULL,
    res_type    TEXT   NOT NULL,
    param       TEXT   NOT NULL,
    low         BIGINT NOT NULL,
    high        BIGINT NOT NULL
);
CREATE INDEX ix_date_pk ON ix_date (resource_pk);
CREATE INDEX ix_date_low ON ix_date (res_type, param, low);
CREATE INDEX ix_date_high ON ix_date (res_type, param, high);

CREATE TABLE ix_number (
    resource_pk BIGINT NOT NULL,
    res_type    TEXT   NOT NULL,
    param       TEXT   NOT NULL,
    value       REAL NOT NULL
);
CREATE INDEX ix_number_pk ON ix_number (resource_pk);
CREATE INDEX ix_number_lookup ON ix_number (res_type, param, value);

-- Quantities with their unit's system and code ('' when absent).
CREATE TABLE ix_quantity (
    resource_pk BIGINT NOT NULL,
    res_type    TEXT   NOT NULL,
    param       TEXT   NOT NULL,
    system      TEXT   NOT NULL,
    code        TEXT   NOT NULL,
    value       REAL NOT NULL
);
CREATE INDEX ix_quantity_pk ON ix_quantity (resource_pk);
CREATE INDEX ix_quantity_lookup ON ix_quantity (res_type, param, value);

CREATE TABLE ix_uri (
    resource_pk BIGINT NOT NULL,
    res_type    TEXT   NOT NULL,
    param       TEXT   NOT NULL,
    uri         TEXT   NOT NULL
);
CREATE INDEX ix_uri_pk ON ix_uri (resource_pk);
CREATE INDEX ix_uri_lookup ON ix_uri (res_type, param, uri);

-- Composite parameters: one row per element holding all components (`a$b`), the first
-- component a token, the second a token, quantity, date, string or reference, encoded in the
-- columns that fit it (a string in code2, normalised; a reference's target in code2).
CREATE TABLE ix_composite (
    resource_pk BIGINT NOT NULL,
    res_type    TEXT   NOT NULL,
    param       TEXT   NOT NULL,
    system1     TEXT   NOT NULL,
    code1       TEXT   NOT NULL,
    system2     TEXT   NOT NULL,
    code2       TEXT   NOT NULL,
    value2      REAL,
    low2        BIGINT,
    high2       BIGINT
);
CREATE INDEX ix_composite_pk ON ix_composite (resource_pk);
CREATE INDEX ix_composite_lookup ON ix_composite (res_type, param, code1);

-- Facts about the database: `search_params` is the fingerprint of the search parameter
-- definitions the index rows were written with (`yba reindex` rebuilds them when it changes).
CREATE TABLE yba_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
