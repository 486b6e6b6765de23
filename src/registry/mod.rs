//! The registry: the database that records which agents may connect (hashed
//! tokens) and which agent connections are live where (`connections`).
//!
//! SQLite by default, MySQL/MariaDB for a cluster; one code path through sqlx's
//! `Any` driver, with dialect-specific SQL only where the dialects differ
//! (upserts). Each backend's schema lives in one place: `schema/<backend>/`.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{any::AnyPoolOptions, AnyPool, Row};

pub mod admin;
mod client_tokens;
mod nodes;
mod stats;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or mysql://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("cannot open database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("applying schema migration {version} failed: {source}")]
    Migrate { version: i64, source: sqlx::Error },
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    MySql,
}

/// Ordered, append-only migrations per backend.
const SQLITE_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("schema/sqlite/0001_init.sql")),
    (2, include_str!("schema/sqlite/0002_transport_note.sql")),
    (3, include_str!("schema/sqlite/0003_nodes.sql")),
    (4, include_str!("schema/sqlite/0004_client_tokens.sql")),
    (5, include_str!("schema/sqlite/0005_admin_tokens.sql")),
];
const MYSQL_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("schema/mysql/0001_init.sql")),
    (2, include_str!("schema/mysql/0002_transport_note.sql")),
    (3, include_str!("schema/mysql/0003_nodes.sql")),
    (4, include_str!("schema/mysql/0004_client_tokens.sql")),
    (5, include_str!("schema/mysql/0005_admin_tokens.sql")),
];

/// One live agent connection, as recorded in `connections`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRecord {
    pub tunnel_ws_id: String,
    pub client_id: String,
    pub node_id: String,
    pub transport: String,
    pub remote_addr: String,
    pub connected_at_ms: i64,
    /// Why this transport (see `Hello.transport_note`).
    pub transport_note: String,
}

/// How the registry's queries fare (see `stats`); clones share the figures.
#[derive(Clone, Debug)]
pub struct QueryMetrics {
    pub duration: prometheus_client::metrics::histogram::Histogram,
    pub errors: prometheus_client::metrics::counter::Counter,
}

#[derive(Clone, Debug)]
pub struct Registry {
    pool: AnyPool,
    backend: Backend,
    metrics: QueryMetrics,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Registry {
    /// Connects (creating a SQLite file if missing) and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, RegistryError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("sqlite:") {
            // `mode=rwc` creates the file on first start.
            let url = if url.contains("mode=") {
                url.to_string()
            } else if url.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            (Backend::MySql, url.replacen("mariadb:", "mysql:", 1))
        } else {
            return Err(RegistryError::UnsupportedUrl(url.to_string()));
        };
        let open_err = |source| RegistryError::Open {
            url: redact(&url),
            source,
        };
        let sqlite = backend == Backend::Sqlite;
        let pool = AnyPoolOptions::new()
            // SQLite serialises writers anyway; a small pool avoids lock churn.
            .max_connections(if sqlite { 4 } else { 16 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // Under WAL, NORMAL syncs at checkpoints instead of on
                        // every commit: a power cut may lose the last few
                        // connection rows (rebuilt as agents reconnect), never
                        // corrupt the file. FULL made every admission wait on
                        // an fsync, so 1,000 agents returning to a restarted
                        // server queued for seconds.
                        sqlx::query("PRAGMA synchronous=NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(open_err)?;
        if sqlite {
            // WAL lets readers proceed while a writer commits.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await
                .map_err(open_err)?;
        }
        let registry = Registry {
            pool,
            backend,
            metrics: QueryMetrics::default(),
        };
        registry.migrate().await?;
        Ok(registry)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn migrate(&self) -> Result<(), RegistryError> {
        let migrations = match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::MySql => MYSQL_MIGRATIONS,
        };
        let mig_err = |version| move |source| RegistryError::Migrate { version, source };
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS warren_migrations (
                version BIGINT NOT NULL PRIMARY KEY,
                applied_at BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map_err(mig_err(0))?;
        let applied: Vec<i64> = sqlx::query("SELECT version FROM warren_migrations")
            .fetch_all(&self.pool)
            .await
            .map_err(mig_err(0))?
            .iter()
            .map(|r| r.get::<i64, _>(0))
            .collect();
        for (version, sql) in migrations {
            if applied.contains(version) {
                continue;
            }
            // Two nodes may migrate at once: CREATEs say IF NOT EXISTS, and an
            // ADD COLUMN that the other node already applied is fine too.
            if let Err(e) = sqlx::raw_sql(sql).execute(&self.pool).await {
                if !is_duplicate_column(&e) {
                    return Err(mig_err(*version)(e));
                }
            }
            let insert = match self.backend {
                Backend::Sqlite => "INSERT OR IGNORE INTO warren_migrations VALUES (?, ?)",
                Backend::MySql => "INSERT IGNORE INTO warren_migrations VALUES (?, ?)",
            };
            sqlx::query(insert)
                .bind(*version)
                .bind(now_ms())
                .execute(&self.pool)
                .await
                .map_err(mig_err(*version))?;
        }
        Ok(())
    }

    /// Creates or replaces the token hash (hex SHA-256) for `client_id`.
    pub async fn set_token_hash(&self, client_id: &str, hash: &str) -> Result<(), RegistryError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "INSERT INTO agents (client_id, token_hash, created_at, rotated_at)
                 VALUES (?, ?, ?, ?)
                 ON CONFLICT (client_id) DO UPDATE SET
                   token_hash = excluded.token_hash, rotated_at = excluded.rotated_at"
            }
            Backend::MySql => {
                "INSERT INTO agents (client_id, token_hash, created_at, rotated_at)
                 VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE
                   token_hash = VALUES(token_hash), rotated_at = VALUES(rotated_at)"
            }
        };
        let now = now_ms();
        sqlx::query(sql)
            .bind(client_id)
            .bind(hash)
            .bind(now)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The stored token hash (hex) for `client_id`, if a token was ever issued.
    pub async fn token_hash(&self, client_id: &str) -> Result<Option<String>, RegistryError> {
        let row = self
            .timed(
                sqlx::query("SELECT token_hash FROM agents WHERE client_id = ?")
                    .bind(client_id)
                    .fetch_optional(&self.pool),
            )
            .await?;
        Ok(row.map(|r| r.get::<String, _>(0)))
    }

    /// Records a live connection (upsert on `tunnel_ws_id`).
    pub async fn upsert_connection(&self, rec: &ConnectionRecord) -> Result<(), RegistryError> {
        self.timed(bind_record(sqlx::query(self.connection_upsert()), rec).execute(&self.pool))
            .await?;
        Ok(())
    }

    /// The dialect's upsert of one `connections` row; see `bind_record`.
    fn connection_upsert(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => {
                "INSERT INTO connections
                   (tunnel_ws_id, client_id, node_id, transport, remote_addr, connected_at,
                    updated_at, transport_note)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (tunnel_ws_id) DO UPDATE SET
                   client_id = excluded.client_id, node_id = excluded.node_id,
                   transport = excluded.transport, remote_addr = excluded.remote_addr,
                   updated_at = excluded.updated_at, transport_note = excluded.transport_note"
            }
            Backend::MySql => {
                "INSERT INTO connections
                   (tunnel_ws_id, client_id, node_id, transport, remote_addr, connected_at,
                    updated_at, transport_note)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE
                   client_id = VALUES(client_id), node_id = VALUES(node_id),
                   transport = VALUES(transport), remote_addr = VALUES(remote_addr),
                   updated_at = VALUES(updated_at), transport_note = VALUES(transport_note)"
            }
        }
    }

    /// Records `rec` and, in the same transaction, removes the row of the
    /// connection it replaces (an agent reconnecting, possibly to another node).
    pub async fn replace_connection(
        &self,
        old_tunnel_ws_id: &str,
        rec: &ConnectionRecord,
    ) -> Result<(), RegistryError> {
        self.timed(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM connections WHERE tunnel_ws_id = ? AND client_id = ?")
                .bind(old_tunnel_ws_id)
                .bind(&rec.client_id)
                .execute(&mut *tx)
                .await?;
            bind_record(sqlx::query(self.connection_upsert()), rec)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })
        .await
    }

    /// Live nodes (lease not expired at `now_ms`) holding a connection for
    /// `client_id`: `(node_id, cluster_addr)`, newest connection first.
    pub async fn routes_for(
        &self,
        client_id: &str,
        now_ms: i64,
    ) -> Result<Vec<(String, String)>, RegistryError> {
        let rows = sqlx::query(
            "SELECT c.node_id, n.cluster_addr FROM connections c
             JOIN nodes n ON n.node_id = c.node_id
             WHERE c.client_id = ? AND n.lease_expires_at >= ?
             ORDER BY c.connected_at DESC",
        )
        .bind(client_id)
        .bind(now_ms)
        .fetch_all(&self.pool);
        let rows = self.timed(rows).await?;
        let mut routes: Vec<(String, String)> = Vec::new();
        for r in &rows {
            let route = (r.get::<String, _>(0), r.get::<String, _>(1));
            if !routes.contains(&route) {
                routes.push(route);
            }
        }
        Ok(routes)
    }

    pub async fn remove_connection(&self, tunnel_ws_id: &str) -> Result<(), RegistryError> {
        self.timed(
            sqlx::query("DELETE FROM connections WHERE tunnel_ws_id = ?")
                .bind(tunnel_ws_id)
                .execute(&self.pool),
        )
        .await?;
        Ok(())
    }

    /// Removes every row a node left behind (e.g. before it starts, after a crash).
    pub async fn remove_node_connections(&self, node_id: &str) -> Result<u64, RegistryError> {
        let done = sqlx::query("DELETE FROM connections WHERE node_id = ?")
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    pub async fn connections_for(
        &self,
        client_id: &str,
    ) -> Result<Vec<ConnectionRecord>, RegistryError> {
        let sql = format!("{CONNECTION_COLUMNS} WHERE client_id = ? ORDER BY connected_at");
        let rows = sqlx::query(&sql)
            .bind(client_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(connection_row).collect())
    }

    /// Every live connection on every node, by client id then age.
    pub async fn all_connections(&self) -> Result<Vec<ConnectionRecord>, RegistryError> {
        let sql = format!("{CONNECTION_COLUMNS} ORDER BY client_id, connected_at");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(connection_row).collect())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The columns `connection_row` reads, in its order.
const CONNECTION_COLUMNS: &str =
    "SELECT tunnel_ws_id, client_id, node_id, transport, remote_addr, \
     connected_at, transport_note FROM connections";

fn connection_row(r: &sqlx::any::AnyRow) -> ConnectionRecord {
    ConnectionRecord {
        tunnel_ws_id: r.get(0),
        client_id: r.get(1),
        node_id: r.get(2),
        transport: r.get(3),
        remote_addr: r.get(4),
        connected_at_ms: r.get(5),
        transport_note: r.get(6),
    }
}

/// Binds a record to `connection_upsert`'s placeholders, in their order.
fn bind_record<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    rec: &'q ConnectionRecord,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(&rec.tunnel_ws_id)
        .bind(&rec.client_id)
        .bind(&rec.node_id)
        .bind(&rec.transport)
        .bind(&rec.remote_addr)
        .bind(rec.connected_at_ms)
        .bind(now_ms())
        .bind(truncate(&rec.transport_note, 255))
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// SQLite's "duplicate column name" / MySQL's ER_DUP_FIELDNAME (1060).
fn is_duplicate_column(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("1060")
                || db.message().contains("duplicate column")
                || db.message().contains("Duplicate column")
        }
        _ => false,
    }
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
