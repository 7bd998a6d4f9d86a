-- People who sign in: patients (by citizen ID), practitioners, pharmacists, administrators.
-- A person's FHIR resource (`fhir_user`, e.g. Patient/123) and organization (Organization/9)
-- decide what the access policy lets them see; the password is an argon2id PHC string.
CREATE TABLE auth_user (
    username      TEXT    PRIMARY KEY,
    role          TEXT    NOT NULL,
    fhir_user     TEXT,
    organization  TEXT,
    password_hash TEXT    NOT NULL,
    disabled      BOOLEAN NOT NULL,
    created       BIGINT  NOT NULL
);

-- Hospital systems (OAuth clients): a secret (argon2id) and/or a public key (PEM, for
-- private_key_jwt), the scopes they may be granted and the organization they act for.
CREATE TABLE auth_client (
    client_id     TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL,
    organization  TEXT,
    secret_hash   TEXT,
    public_key    TEXT,
    scopes        TEXT    NOT NULL,
    disabled      BOOLEAN NOT NULL,
    created       BIGINT  NOT NULL
);

-- A sign-in: every access token names its session (`sid`), so revoking the session (or
-- disabling the account) ends every token it issued.
CREATE TABLE auth_session (
    sid        TEXT    PRIMARY KEY,
    subject    TEXT    NOT NULL,
    client_id  TEXT    NOT NULL,
    scopes     TEXT    NOT NULL,
    created    BIGINT  NOT NULL,
    expires    BIGINT  NOT NULL,
    revoked    BOOLEAN NOT NULL
);
CREATE INDEX auth_session_subject ON auth_session (subject);

-- Refresh tokens, by SHA-256 of the token: each is used once (rotation); presenting a used one
-- again revokes its session (it was stolen).
CREATE TABLE auth_refresh (
    token_hash TEXT    PRIMARY KEY,
    sid        TEXT    NOT NULL,
    expires    BIGINT  NOT NULL,
    used       BOOLEAN NOT NULL
);
CREATE INDEX auth_refresh_sid ON auth_refresh (sid);

-- The `jti` of client assertions already used (SMART Backend Services: no replay).
CREATE TABLE auth_assertion (
    client_id TEXT   NOT NULL,
    jti       TEXT   NOT NULL,
    expires   BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
