-- Bundles `yba import` and `$import` have written, by the SHA-256 of their bytes: written in the
-- Bundle's own transaction, so a re-run after an interruption skips exactly what went in.
-- (NDJSON resources need no mark: they are written under their own ids, and a resource whose
-- content is already current is left alone.)
CREATE TABLE import_mark (
    key TEXT   PRIMARY KEY,
    at  BIGINT NOT NULL
);

-- Asynchronous bulk jobs (`$import`, `$export`): in the database, so that any process sharing
-- it answers the status poll, and a job survives the process that runs it.
CREATE TABLE bulk_job (
    id       TEXT   PRIMARY KEY,
    kind     TEXT   NOT NULL,
    -- Who asked: only they (or an administrator) may poll or delete the job.
    owner    TEXT   NOT NULL,
    -- queued | running | done | failed | cancelled
    status   TEXT   NOT NULL,
    -- The kick-off request, as the completion manifest repeats it.
    request  TEXT   NOT NULL,
    -- What is done so far, for X-Progress.
    progress TEXT   NOT NULL,
    created  BIGINT NOT NULL,
    updated  BIGINT NOT NULL,
    -- The completion manifest (JSON) once done, or the OperationOutcome of a failure.
    result   TEXT
);
CREATE INDEX bulk_job_owner ON bulk_job (owner);

-- The output of a job, a page at a time (at most one page is ever held in memory, writing or
-- serving): a job's file of one type is its parts of that type in `seq` order.
CREATE TABLE bulk_file (
    job_id   TEXT   NOT NULL,
    seq      BIGINT NOT NULL,
    res_type TEXT   NOT NULL,
    count    BIGINT NOT NULL,
    body     TEXT   NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Subscriptions. One process at a time (the holder of the lease) reads the change sequence
-- (resource_version.txid, pk) past the cursor, matches it against the active Subscriptions and
-- queues a notification per match, in the same transaction as it moves the cursor on; then it
-- delivers each Subscription's queue in order, deleting a notification once its endpoint took
-- it (at least once: a crash between delivery and deletion delivers again).
CREATE TABLE sub_state (
    name        TEXT   PRIMARY KEY,
    txid        BIGINT,
    pk          BIGINT,
    holder      TEXT,
    lease_until BIGINT NOT NULL
);
INSERT INTO sub_state (name, lease_until) VALUES ('matcher', 0);

CREATE TABLE sub_queue (
    seq      INTEGER PRIMARY KEY,
    sub_id   TEXT   NOT NULL,
    res_type TEXT   NOT NULL,
    res_id   TEXT   NOT NULL,
    version  BIGINT NOT NULL,
    -- When the version was written (ms), for the latency of its delivery.
    at       BIGINT NOT NULL
);
CREATE INDEX sub_queue_sub ON sub_queue (sub_id, seq);
