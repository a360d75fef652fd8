-- SSH sessions Breakwater issued, by the SHA-256 digest of their token (the
-- token itself is shown once and never stored). The gateway revokes a
-- session by token alone; this says which sandbox a token belongs to, so a
-- revoke through one sandbox's path cannot end another sandbox's session
-- and the audit entry names the right one.
CREATE TABLE ssh_sessions (
    token_digest TEXT PRIMARY KEY,
    gateway      TEXT NOT NULL,
    sandbox      TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT
);
CREATE INDEX ssh_sessions_expiry ON ssh_sessions (expires_at);
