-- Gateways Breakwater manages, their labels, and the append-only audit trail.
CREATE TABLE gateways (
    name                     TEXT PRIMARY KEY NOT NULL,
    endpoint                 TEXT NOT NULL,
    scheme                   TEXT NOT NULL CHECK (scheme IN ('https', 'http')),
    auth_mode                TEXT NOT NULL CHECK (auth_mode IN ('mtls', 'tls', 'none')),
    skip_server_verification INTEGER NOT NULL DEFAULT 0,
    ca_cert                  TEXT,
    client_cert              TEXT,
    -- AEAD ciphertext (nonce || ciphertext), never the PEM itself.
    client_key_enc           BLOB,
    metadata                 TEXT NOT NULL DEFAULT '{}',
    description              TEXT,
    status                   TEXT NOT NULL DEFAULT 'unknown'
                             CHECK (status IN ('unknown', 'connected', 'unreachable', 'error')),
    error_code               TEXT,
    error                    TEXT,
    version                  TEXT,
    checked_at               TEXT,
    last_seen                TEXT,
    registered_at            TEXT NOT NULL,
    updated_at               TEXT NOT NULL
);

CREATE TABLE gateway_labels (
    gateway TEXT NOT NULL REFERENCES gateways (name) ON DELETE CASCADE,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (gateway, key)
);
CREATE INDEX gateway_labels_kv ON gateway_labels (key, value);

CREATE TABLE audit_log (
    seq           INTEGER PRIMARY KEY NOT NULL,
    id            TEXT NOT NULL UNIQUE,
    at            TEXT NOT NULL,
    actor         TEXT NOT NULL,
    role          TEXT NOT NULL,
    client_ip     TEXT,
    action        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    gateway       TEXT,
    detail        TEXT NOT NULL,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);

-- One row: the head of the hash chain, updated in the same transaction as
-- each append, so concurrent writers serialise on it and cannot fork the
-- chain. The anchor is the last entry removed by retention.
CREATE TABLE audit_chain (
    id          INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    seq         INTEGER NOT NULL,
    head_hash   TEXT NOT NULL,
    anchor_seq  INTEGER NOT NULL,
    anchor_hash TEXT NOT NULL
);
INSERT INTO audit_chain (id, seq, head_hash, anchor_seq, anchor_hash) VALUES (1, 0, 'genesis', 0, 'genesis');

-- The log is append-only: updates are refused outright.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
