-- Every version of every resource. The current version of a resource is its highest version
-- (is_current marks it too, for scans); a delete adds a tombstone version (deleted = true, empty
-- body) that is current.
CREATE TABLE resource_version (
    pk           INTEGER PRIMARY KEY,
    res_type     TEXT    NOT NULL,
    res_id       TEXT    NOT NULL,
    version      BIGINT  NOT NULL,
    is_current   BOOLEAN NOT NULL,
    deleted      BOOLEAN NOT NULL,
    -- 0 create (POST), 1 update (PUT), 2 delete, 3 patch: the request of a history entry.
    method       SMALLINT NOT NULL,
    -- The change sequence: one number per committed write transaction, in commit order.
    txid         BIGINT  NOT NULL,
    -- meta.lastUpdated, in milliseconds since the Unix epoch.
    last_updated BIGINT  NOT NULL,
    -- The exact FHIR JSON a read returns.
    body         TEXT    NOT NULL
);
-- Serves read (the highest version), vread and instance history, and keeps versions unique.
CREATE UNIQUE INDEX resource_version_key ON resource_version (res_type, res_id, version);
CREATE INDEX resource_version_updated ON resource_version (last_updated);
CREATE INDEX resource_version_type_updated ON resource_version (res_type, last_updated);
CREATE INDEX resource_version_txid ON resource_version (txid);

-- Token index rows of current versions (search arrives with its own issue; conditional
-- create/update/delete by identifier use these now).
CREATE TABLE ix_token (
    resource_pk BIGINT NOT NULL,
    res_type    TEXT   NOT NULL,
    param       TEXT   NOT NULL,
    system      TEXT   NOT NULL,
    code        TEXT   NOT NULL,
    PRIMARY KEY (resource_pk, param, system, code)
);
CREATE INDEX ix_token_lookup ON ix_token (res_type, param, code, system);
