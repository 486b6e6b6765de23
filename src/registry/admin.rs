//! What the operator sees and steers through the registry: admin tokens
//! (`admin_tokens`; only SHA-256 hashes are stored), the list of agents with
//! their tokens, and the nodes of a cluster.

use sqlx::Row;

use super::{now_ms, Backend, Registry, RegistryError};

/// A client id that may connect, as `warren token list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentEntry {
    pub client_id: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub rotated_at: i64,
    /// Client tokens its clients may present (0: open to any client).
    pub client_tokens: i64,
}

/// A server node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeEntry {
    pub node_id: String,
    pub cluster_addr: String,
    pub started_at: i64,
    pub lease_expires_at: i64,
}

impl Registry {
    /// Creates or replaces the admin token called `name` (its hex SHA-256).
    pub async fn set_admin_token(&self, name: &str, hash: &str) -> Result<(), RegistryError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "INSERT INTO admin_tokens (name, token_hash, created_at) VALUES (?, ?, ?)
                 ON CONFLICT (name) DO UPDATE SET
                   token_hash = excluded.token_hash, created_at = excluded.created_at"
            }
            Backend::MySql => {
                "INSERT INTO admin_tokens (name, token_hash, created_at) VALUES (?, ?, ?)
                 ON DUPLICATE KEY UPDATE
                   token_hash = VALUES(token_hash), created_at = VALUES(created_at)"
            }
        };
        sqlx::query(sql)
            .bind(name)
            .bind(hash)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every admin token's hash.
    pub async fn admin_token_hashes(&self) -> Result<Vec<String>, RegistryError> {
        let rows = self
            .timed(sqlx::query("SELECT token_hash FROM admin_tokens").fetch_all(&self.pool))
            .await?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    /// Removes the admin token called `name`; whether there was one.
    pub async fn remove_admin_token(&self, name: &str) -> Result<bool, RegistryError> {
        let done = sqlx::query("DELETE FROM admin_tokens WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every client id that may connect, by id.
    pub async fn agents(&self) -> Result<Vec<AgentEntry>, RegistryError> {
        let rows = sqlx::query(
            "SELECT a.client_id, a.created_at, a.rotated_at,
                    (SELECT COUNT(*) FROM client_tokens t WHERE t.client_id = a.client_id)
             FROM agents a ORDER BY a.client_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| AgentEntry {
                client_id: r.get(0),
                created_at: r.get(1),
                rotated_at: r.get(2),
                client_tokens: r.get(3),
            })
            .collect())
    }

    /// Every client id that may connect (the revocation check's one read).
    pub async fn agent_ids(&self) -> Result<Vec<String>, RegistryError> {
        let rows = self
            .timed(sqlx::query("SELECT client_id FROM agents").fetch_all(&self.pool))
            .await?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    /// Revokes `client_id`'s token: it can no longer connect (its client
    /// tokens are kept, for a client id issued again). Whether it had one.
    pub async fn remove_agent(&self, client_id: &str) -> Result<bool, RegistryError> {
        let done = sqlx::query("DELETE FROM agents WHERE client_id = ?")
            .bind(client_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every registered node, by id.
    pub async fn nodes(&self) -> Result<Vec<NodeEntry>, RegistryError> {
        let rows = sqlx::query(
            "SELECT node_id, cluster_addr, started_at, lease_expires_at FROM nodes ORDER BY node_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| NodeEntry {
                node_id: r.get(0),
                cluster_addr: r.get(1),
                started_at: r.get(2),
                lease_expires_at: r.get(3),
            })
            .collect())
    }
}
