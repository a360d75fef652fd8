-- Policy pins, approval workflows, votes, and the human actions that let
-- the gateway's draft history be attributed.
CREATE TABLE policy_pins (
    gateway    TEXT NOT NULL,
    sandbox    TEXT NOT NULL,
    version    BIGINT NOT NULL,
    pinned_by  TEXT NOT NULL,
    reason     TEXT,
    pinned_at  TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ,
    PRIMARY KEY (gateway, sandbox)
);

CREATE TABLE approval_workflows (
    gateway                    TEXT NOT NULL,
    sandbox                    TEXT NOT NULL,
    required_approvals         BIGINT NOT NULL CHECK (required_approvals BETWEEN 1 AND 20),
    required_roles             TEXT NOT NULL,
    distinct_actors            BOOLEAN NOT NULL,
    escalation_timeout_minutes BIGINT,
    updated_by                 TEXT NOT NULL,
    updated_at                 TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (gateway, sandbox)
);

CREATE TABLE approval_votes (
    gateway  TEXT NOT NULL,
    sandbox  TEXT NOT NULL,
    chunk_id TEXT NOT NULL,
    actor    TEXT NOT NULL,
    role     TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    reason   TEXT,
    at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (gateway, sandbox, chunk_id, actor)
);

-- One row per decided chunk: the insert that succeeds is the one that acts
-- upstream, so racing votes approve exactly once.
CREATE TABLE approval_outcomes (
    gateway    TEXT NOT NULL,
    sandbox    TEXT NOT NULL,
    chunk_id   TEXT NOT NULL,
    outcome    TEXT NOT NULL CHECK (outcome IN ('approve', 'reject')),
    decided_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (gateway, sandbox, chunk_id)
);

CREATE TABLE chunk_actions (
    id       BIGSERIAL PRIMARY KEY,
    gateway  TEXT NOT NULL,
    sandbox  TEXT NOT NULL,
    chunk_id TEXT NOT NULL,
    action   TEXT NOT NULL,
    actor    TEXT NOT NULL,
    at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX chunk_actions_sandbox ON chunk_actions (gateway, sandbox);
