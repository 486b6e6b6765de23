-- Agents allowed to connect: one row per client id, with the SHA-256 of its token.
CREATE TABLE IF NOT EXISTS agents (
    client_id   TEXT    NOT NULL PRIMARY KEY,
    token_hash  TEXT    NOT NULL, -- hex SHA-256 of the token
    created_at  INTEGER NOT NULL, -- unix milliseconds
    rotated_at  INTEGER NOT NULL
);

-- Live agent connections: one row per connection, removed when it ends.
CREATE TABLE IF NOT EXISTS connections (
    tunnel_ws_id TEXT    NOT NULL PRIMARY KEY,
    client_id    TEXT    NOT NULL,
    node_id      TEXT    NOT NULL,
    transport    TEXT    NOT NULL,
    remote_addr  TEXT    NOT NULL,
    connected_at INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS connections_client ON connections (client_id);
CREATE INDEX IF NOT EXISTS connections_node ON connections (node_id);
