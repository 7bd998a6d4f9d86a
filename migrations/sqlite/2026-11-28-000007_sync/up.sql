-- A commune node's sync with its upstream (the central yba). Empty on a server without one.

-- Cursors and the last round: 'push' is where the node's change sequence (txid, pk) has been
-- pushed up to; 'pull' holds in `value` the upstream `_history?_since=` instant read from;
-- 'round' holds in `value` the JSON report of the last round.
CREATE TABLE sync_state (
    name  TEXT   PRIMARY KEY,
    txid  BIGINT,
    pk    BIGINT,
    value TEXT
);

-- Each resource both sides hold: the local version that is upstream's `upstream_version`. A
-- local version past `local_version` is the node's own, to push; an upstream version past
-- `upstream_version` is to pull. Written in the transaction that writes the local version.
CREATE TABLE sync_link (
    res_type         TEXT   NOT NULL,
    res_id           TEXT   NOT NULL,
    local_version    BIGINT NOT NULL,
    upstream_version BIGINT NOT NULL,
    PRIMARY KEY (res_type, res_id)
);

-- What the station has to review: a version of the node's that upstream's won over (changed on
-- both sides while apart: upstream's is current, the node's stays in the node's history as
-- `local_version`), or that upstream refused. Nothing is dropped silently.
CREATE TABLE sync_conflict (
    seq              INTEGER PRIMARY KEY,
    res_type         TEXT   NOT NULL,
    res_id           TEXT   NOT NULL,
    local_version    BIGINT NOT NULL,
    upstream_version BIGINT,
    -- 'both-changed' | 'deleted-upstream' | 'refused' | 'same-citizen'
    kind             TEXT   NOT NULL,
    detail           TEXT   NOT NULL,
    at               BIGINT NOT NULL,
    -- When the station marked it reviewed (null: open).
    resolved         BIGINT
);
CREATE INDEX sync_conflict_open ON sync_conflict (resolved, seq);
