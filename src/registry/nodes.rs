//! The server nodes of a cluster in the registry (`nodes`): each node's
//! address and the lease it renews by heartbeat; expired ones are reaped.

use sqlx::Row;

use super::{now_ms, Backend, Registry, RegistryError};

impl Registry {
    /// Registers this node (or refreshes its address) with a lease until `lease_expires_ms`.
    pub async fn upsert_node(
        &self,
        node_id: &str,
        cluster_addr: &str,
        lease_expires_ms: i64,
    ) -> Result<(), RegistryError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "INSERT INTO nodes (node_id, cluster_addr, started_at, lease_expires_at)
                 VALUES (?, ?, ?, ?)
                 ON CONFLICT (node_id) DO UPDATE SET
                   cluster_addr = excluded.cluster_addr, started_at = excluded.started_at,
                   lease_expires_at = excluded.lease_expires_at"
            }
            Backend::MySql => {
                "INSERT INTO nodes (node_id, cluster_addr, started_at, lease_expires_at)
                 VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE
                   cluster_addr = VALUES(cluster_addr), started_at = VALUES(started_at),
                   lease_expires_at = VALUES(lease_expires_at)"
            }
        };
        sqlx::query(sql)
            .bind(node_id)
            .bind(cluster_addr)
            .bind(now_ms())
            .bind(lease_expires_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Extends this node's lease; `false` if its row is gone (another node
    /// declared it dead), in which case the caller must re-register.
    pub async fn renew_lease(
        &self,
        node_id: &str,
        lease_expires_ms: i64,
    ) -> Result<bool, RegistryError> {
        let done = self
            .timed(
                sqlx::query("UPDATE nodes SET lease_expires_at = ? WHERE node_id = ?")
                    .bind(lease_expires_ms)
                    .bind(node_id)
                    .execute(&self.pool),
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes nodes whose lease expired before `now_ms`, and their connection
    /// rows; returns the ids removed.
    pub async fn reap_expired_nodes(&self, now_ms: i64) -> Result<Vec<String>, RegistryError> {
        let expired: Vec<String> =
            sqlx::query("SELECT node_id FROM nodes WHERE lease_expires_at < ?")
                .bind(now_ms)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
        for node in &expired {
            self.remove_node_connections(node).await?;
            // Only if it did not come back meanwhile.
            sqlx::query("DELETE FROM nodes WHERE node_id = ? AND lease_expires_at < ?")
                .bind(node)
                .bind(now_ms)
                .execute(&self.pool)
                .await?;
        }
        Ok(expired)
    }

    /// Registered node ids (live or not yet reaped).
    pub async fn node_ids(&self) -> Result<Vec<String>, RegistryError> {
        Ok(sqlx::query("SELECT node_id FROM nodes ORDER BY node_id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub async fn remove_node(&self, node_id: &str) -> Result<(), RegistryError> {
        sqlx::query("DELETE FROM nodes WHERE node_id = ?")
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
