-- Facts about the store itself; `key_check` proves the server key is the
-- one the stored secrets were sealed with.
CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- AEAD ciphertext of a bearer token sent to the gateway, never the token.
ALTER TABLE gateways ADD COLUMN bearer_token_enc BYTEA;
