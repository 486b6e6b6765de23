-- Client tokens: an agent with at least one answers only clients presenting
-- one (`Authorization: Bearer` or `?token=`). Only the SHA-256 is stored.
CREATE TABLE IF NOT EXISTS client_tokens (
    client_id  VARCHAR(128) NOT NULL,
    token_hash CHAR(64)     NOT NULL, -- hex SHA-256 of the token
    created_at BIGINT       NOT NULL, -- unix milliseconds
    PRIMARY KEY (client_id, token_hash)
);
