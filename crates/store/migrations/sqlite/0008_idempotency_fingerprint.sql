-- What request an idempotency key was first used with (a digest of its
-- body), so a retry with the same key and a different body is refused
-- instead of silently answered with the first request's operation. Rows
-- from before this column count as matching.
ALTER TABLE operations ADD COLUMN idempotency_fingerprint TEXT;
