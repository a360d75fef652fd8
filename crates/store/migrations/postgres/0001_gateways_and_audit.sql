-- Gateways Breakwater manages, their labels, and the append-only audit trail.
CREATE TABLE gateways (
    name                     TEXT PRIMARY KEY,
    endpoint                 TEXT NOT NULL,
    scheme                   TEXT NOT NULL CHECK (scheme IN ('https', 'http')),
    auth_mode                TEXT NOT NULL CHECK (auth_mode IN ('mtls', 'tls', 'none')),
    skip_server_verification BOOLEAN NOT NULL DEFAULT FALSE,
    ca_cert                  TEXT,
    client_cert              TEXT,
    -- AEAD ciphertext (nonce || ciphertext), never the PEM itself.
    client_key_enc           BYTEA,
    metadata                 JSONB NOT NULL DEFAULT '{}',
    description              TEXT,
    status                   TEXT NOT NULL DEFAULT 'unknown'
                             CHECK (status IN ('unknown', 'connected', 'unreachable', 'error')),
    error_code               TEXT,
    error                    TEXT,
    version                  TEXT,
    checked_at               TIMESTAMPTZ,
    last_seen                TIMESTAMPTZ,
    registered_at            TIMESTAMPTZ NOT NULL,
    updated_at               TIMESTAMPTZ NOT NULL
);

CREATE TABLE gateway_labels (
    gateway TEXT NOT NULL REFERENCES gateways (name) ON DELETE CASCADE,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (gateway, key)
);
CREATE INDEX gateway_labels_kv ON gateway_labels (key, value);

CREATE TABLE audit_log (
    seq           BIGINT PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    at            TIMESTAMPTZ NOT NULL,
    actor         TEXT NOT NULL,
    role          TEXT NOT NULL,
    client_ip     TEXT,
    action        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    gateway       TEXT,
    detail        JSONB NOT NULL,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);

-- One row: the head of the hash chain, locked by each append's transaction,
-- so concurrent writers (several replicas) serialise and cannot fork it.
-- The anchor is the last entry removed by retention.
CREATE TABLE audit_chain (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         BIGINT NOT NULL,
    head_hash   TEXT NOT NULL,
    anchor_seq  BIGINT NOT NULL,
    anchor_hash TEXT NOT NULL
);
INSERT INTO audit_chain (id, seq, head_hash, anchor_seq, anchor_hash) VALUES (1, 0, 'genesis', 0, 'genesis');

CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
