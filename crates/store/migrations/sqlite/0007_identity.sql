-- Identity: users, browser sessions, service principals (API keys),
-- groups, per-gateway role overrides, invites. Secrets are never stored:
-- passwords as Argon2id hashes, session tokens, API keys and invite tokens
-- as SHA-256 digests (they are long random values, so a fast hash is
-- enough and lets a lookup be one indexed read).
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    role          TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    active        BOOLEAN NOT NULL,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until  TEXT,
    oidc_provider TEXT,
    oidc_subject  TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    UNIQUE (oidc_provider, oidc_subject)
);

CREATE TABLE sessions (
    token_hash   TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    expires_at   TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE service_principals (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    key_hash     TEXT NOT NULL UNIQUE,
    key_prefix   TEXT NOT NULL,
    expires_at   TEXT,
    last_used_at TEXT,
    created_by   TEXT NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE TABLE groups (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    role        TEXT CHECK (role IN ('viewer', 'operator', 'admin')),
    description TEXT,
    created_at  TEXT NOT NULL
);

CREATE TABLE group_members (
    group_id TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user ON group_members (user_id);

-- A role on one gateway for a user, a service principal or a group.
CREATE TABLE gateway_roles (
    principal_kind TEXT NOT NULL CHECK (principal_kind IN ('user', 'service_principal', 'group')),
    principal_id   TEXT NOT NULL,
    gateway        TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    PRIMARY KEY (principal_kind, principal_id, gateway)
);

CREATE TABLE invites (
    token_hash TEXT PRIMARY KEY,
    email      TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT
);

-- First-run setup creates the first admin exactly once, even when two
-- requests race: the single row here is the claim.
CREATE TABLE setup_claim (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    claimed_at TEXT NOT NULL
);
