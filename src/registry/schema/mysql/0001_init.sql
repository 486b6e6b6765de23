-- Vitess/PlanetScale compatible: primary key on every table, no foreign keys,
-- triggers or stored procedures.

-- Agents allowed to connect: one row per client id, with the SHA-256 of its token.
CREATE TABLE IF NOT EXISTS agents (
    client_id   VARCHAR(128)   NOT NULL PRIMARY KEY,
    token_hash  CHAR(64)       NOT NULL, -- hex SHA-256 of the token
    created_at  BIGINT         NOT NULL, -- unix milliseconds
    rotated_at  BIGINT         NOT NULL
);

-- Live agent connections: one row per connection, removed when it ends.
CREATE TABLE IF NOT EXISTS connections (
    tunnel_ws_id VARCHAR(64)  NOT NULL PRIMARY KEY,
    client_id    VARCHAR(128) NOT NULL,
    node_id      VARCHAR(128) NOT NULL,
    transport    VARCHAR(16)  NOT NULL,
    remote_addr  VARCHAR(64)  NOT NULL,
    connected_at BIGINT       NOT NULL,
    updated_at   BIGINT       NOT NULL,
    KEY connections_client (client_id),
    KEY connections_node (node_id)
);
