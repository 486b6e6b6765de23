-- Server nodes of a cluster: where other nodes reach them, and a lease each
-- node renews by heartbeat. A node whose lease has expired is dead: others stop
-- routing to it and remove its connection rows.
CREATE TABLE IF NOT EXISTS nodes (
    node_id          VARCHAR(128) NOT NULL PRIMARY KEY,
    cluster_addr     VARCHAR(255) NOT NULL,
    started_at       BIGINT       NOT NULL, -- unix milliseconds
    lease_expires_at BIGINT       NOT NULL
);
