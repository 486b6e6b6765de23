//! Client tokens in the registry: what an agent's clients must present when
//! the agent has any (`client_tokens` table; only SHA-256 hashes are stored).

use sqlx::Row;

use super::{now_ms, Registry, RegistryError};

impl Registry {
    /// Adds a client token (its hex SHA-256) for `client_id`.
    pub async fn add_client_token(&self, client_id: &str, hash: &str) -> Result<(), RegistryError> {
        sqlx::query(
            "INSERT INTO client_tokens (client_id, token_hash, created_at) VALUES (?, ?, ?)",
        )
        .bind(client_id)
        .bind(hash)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes one client token; whether it existed.
    pub async fn remove_client_token(
        &self,
        client_id: &str,
        hash: &str,
    ) -> Result<bool, RegistryError> {
        let done = sqlx::query("DELETE FROM client_tokens WHERE client_id = ? AND token_hash = ?")
            .bind(client_id)
            .bind(hash)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The client token hashes of `client_id` (none: its clients need none).
    pub async fn client_token_hashes(&self, client_id: &str) -> Result<Vec<String>, RegistryError> {
        let rows = self
            .timed(
                sqlx::query("SELECT token_hash FROM client_tokens WHERE client_id = ?")
                    .bind(client_id)
                    .fetch_all(&self.pool),
            )
            .await?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }
}
