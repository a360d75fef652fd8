-- What Breakwater keeps about a sandbox beside the gateway. `labels` is a
-- JSON object that replaces the gateway's labels in every view; NULL means
-- the gateway's labels show. Rows go when the sandbox is deleted through
-- Breakwater or its gateway is unregistered.
CREATE TABLE sandbox_metadata (
    gateway     TEXT NOT NULL,
    sandbox     TEXT NOT NULL,
    description TEXT,
    labels      TEXT,
    updated_by  TEXT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (gateway, sandbox)
);
