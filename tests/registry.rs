//! The registry against each real database: SQLite always, MySQL/MariaDB when
//! `WARREN_TEST_MYSQL_URL` is set (CI sets it; a set but unreachable URL fails).

mod common;

use common::{mysql_url, unique};
use warren::{
    auth::{self, Verdict},
    registry::{now_ms, ConnectionRecord, Registry},
};

async fn open(db: common::Db) -> Option<(Registry, Option<tempfile::TempDir>)> {
    match db {
        common::Db::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("r.db").display());
            Some((Registry::open(&url).await.expect("sqlite opens"), Some(dir)))
        }
        common::Db::MySql => {
            let url = mysql_url()?;
            Some((
                Registry::open(&url)
                    .await
                    .expect("MySQL reachable at WARREN_TEST_MYSQL_URL"),
                None,
            ))
        }
    }
}

async fn tokens(db: common::Db) {
    let Some((registry, _dir)) = open(db).await else {
        return;
    };
    let id = unique("tok");
    assert_eq!(
        auth::verify_token(&registry, &id, "x").await.unwrap(),
        Verdict::UnknownClient
    );
    let first = auth::issue_token(&registry, &id).await.unwrap();
    assert_eq!(
        auth::verify_token(&registry, &id, &first).await.unwrap(),
        Verdict::Accepted
    );
    assert_eq!(
        auth::verify_token(&registry, &id, "wrn_wrong")
            .await
            .unwrap(),
        Verdict::BadToken
    );
    // Rotation: the old token stops working, the new one works.
    let second = auth::issue_token(&registry, &id).await.unwrap();
    assert_eq!(
        auth::verify_token(&registry, &id, &first).await.unwrap(),
        Verdict::BadToken
    );
    assert_eq!(
        auth::verify_token(&registry, &id, &second).await.unwrap(),
        Verdict::Accepted
    );
    // Only the hash is stored.
    let stored = registry.token_hash(&id).await.unwrap().unwrap();
    assert_eq!(stored, auth::hash_token(&second));
    assert!(!stored.contains(&second[4..]));
    assert!(auth::issue_token(&registry, "bad id").await.is_err());
}

async fn connections(db: common::Db) {
    let Some((registry, _dir)) = open(db).await else {
        return;
    };
    let client = unique("conn");
    let node = unique("node");
    let rec = |id: &str| ConnectionRecord {
        tunnel_ws_id: id.to_string(),
        client_id: client.clone(),
        node_id: node.clone(),
        transport: "quic".into(),
        remote_addr: "127.0.0.1:5000".into(),
        connected_at_ms: now_ms(),
        transport_note: "QUIC handshake completed in 2ms".into(),
    };
    let a = unique("a");
    let b = unique("b");
    registry.upsert_connection(&rec(&a)).await.unwrap();
    registry.upsert_connection(&rec(&b)).await.unwrap();
    // Upsert: the same id again updates, never duplicates.
    let mut moved = rec(&a);
    moved.transport = "ws".into();
    registry.upsert_connection(&moved).await.unwrap();
    let rows = registry.connections_for(&client).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows.iter().find(|r| r.tunnel_ws_id == a).unwrap().transport,
        "ws"
    );
    registry.remove_connection(&a).await.unwrap();
    assert_eq!(registry.connections_for(&client).await.unwrap().len(), 1);
    assert_eq!(registry.remove_node_connections(&node).await.unwrap(), 1);
    assert!(registry.connections_for(&client).await.unwrap().is_empty());
}

async fn migrations_are_idempotent(db: common::Db) {
    let Some((registry, dir)) = open(db).await else {
        return;
    };
    // Opening again (a restart, or a second node) re-applies nothing and works.
    let url = match &dir {
        Some(dir) => format!("sqlite://{}", dir.path().join("r.db").display()),
        None => mysql_url().unwrap(),
    };
    let again = Registry::open(&url).await.expect("second open");
    let id = unique("mig");
    auth::issue_token(&registry, &id).await.unwrap();
    assert!(again.token_hash(&id).await.unwrap().is_some());
}

macro_rules! over_databases {
    ($($name:ident),*) => {
        mod sqlite { $( #[tokio::test] async fn $name() { super::$name(super::common::Db::Sqlite).await } )* }
        mod mysql { $( #[tokio::test] async fn $name() { super::$name(super::common::Db::MySql).await } )* }
    };
}

over_databases!(
    tokens,
    client_tokens,
    connections,
    migrations_are_idempotent
);

/// Client tokens: none (open), issued (hash stored, token matches), a second
/// one, one revoked.
async fn client_tokens(db: common::Db) {
    let Some((registry, _dir)) = open(db).await else {
        return;
    };
    let id = unique("cl");
    assert!(registry.client_token_hashes(&id).await.unwrap().is_empty());
    let first = auth::issue_client_token(&registry, &id).await.unwrap();
    let second = auth::issue_client_token(&registry, &id).await.unwrap();
    let hashes = registry.client_token_hashes(&id).await.unwrap();
    assert_eq!(hashes.len(), 2);
    assert!(
        !hashes.iter().any(|h| h.contains(&first[4..])),
        "only hashes are stored"
    );
    assert!(auth::matches_any(&hashes, &first));
    assert!(auth::matches_any(&hashes, &second));
    assert!(!auth::matches_any(&hashes, "wcl_guess"));
    assert!(registry
        .remove_client_token(&id, &auth::hash_token(&first))
        .await
        .unwrap());
    let hashes = registry.client_token_hashes(&id).await.unwrap();
    assert!(!auth::matches_any(&hashes, &first));
    assert!(auth::matches_any(&hashes, &second));
}

#[tokio::test]
async fn unsupported_url_is_a_clear_error() {
    let err = Registry::open("postgres://localhost/x").await.unwrap_err();
    assert!(
        err.to_string().contains("use sqlite://PATH or mysql://"),
        "{err}"
    );
}
