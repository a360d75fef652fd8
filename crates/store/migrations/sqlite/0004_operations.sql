-- Long-running operations. `active_key` is set while an operation is
-- pending, running or cancelling and cleared when it ends, so its UNIQUE
-- constraint allows one active operation per (gateway, resource type,
-- resource name) without a check-then-insert race. `idempotency_key` is
-- scoped by the caller and route before it gets here.
CREATE TABLE operations (
    id              TEXT PRIMARY KEY,
    gateway         TEXT,
    resource_type   TEXT NOT NULL,
    resource_name   TEXT NOT NULL,
    action          TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'running', 'cancelling', 'succeeded', 'failed')),
    active_key      TEXT UNIQUE,
    idempotency_key TEXT UNIQUE,
    progress        INTEGER NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    message         TEXT,
    result          TEXT,
    error_code      TEXT,
    error           TEXT,
    actor           TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX operations_status ON operations (status, updated_at);
