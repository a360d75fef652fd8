-- Sign-ins with an identity provider in flight (between the redirect to the
-- provider and its callback). A row is taken (deleted) by the callback, so a
-- state is used once, by whichever replica receives it. The state and the
-- browser binding are stored as SHA-256 digests; the PKCE verifier is sealed
-- with the server key like every other secret.
CREATE TABLE oidc_logins (
    state_hash        TEXT PRIMARY KEY,
    provider          TEXT NOT NULL,
    browser_hash      TEXT NOT NULL,
    nonce             TEXT NOT NULL,
    code_verifier_enc BYTEA NOT NULL,
    next              TEXT NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    expires_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX oidc_logins_expires ON oidc_logins (expires_at);
