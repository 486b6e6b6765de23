-- Admin tokens: what the admin API (`--admin-listen`) asks for as
-- `Authorization: Bearer`. One per name; only the SHA-256 is stored.
CREATE TABLE IF NOT EXISTS admin_tokens (
    name       VARCHAR(64) NOT NULL PRIMARY KEY,
    token_hash CHAR(64)    NOT NULL, -- hex SHA-256 of the token
    created_at BIGINT      NOT NULL  -- unix milliseconds
);
