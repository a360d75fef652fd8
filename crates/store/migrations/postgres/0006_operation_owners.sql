-- Which replica runs an operation, and which replicas are alive. Several
-- Breakwater processes may share one PostgreSQL database: at start and on a
-- schedule a replica fails only the active operations of replicas that
-- stopped sending heartbeats (and of its own previous run), never those of
-- a live neighbour. A cancel for an operation another replica runs is
-- recorded as 'cancelling' for that replica to act on.
ALTER TABLE operations ADD COLUMN owner TEXT;
CREATE INDEX operations_owner ON operations (owner) WHERE active_key IS NOT NULL;

CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
);
