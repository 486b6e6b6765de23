//! Agent identity: which client ids are valid, and the agent tokens. A token is
//! 32 random bytes shown once; only its SHA-256 is stored (a token has full
//! entropy, so a slow password hash adds nothing) and it is compared in
//! constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::registry::{Registry, RegistryError};

/// A secret (an agent token, the cluster secret) that never prints itself:
/// `Debug` shows a placeholder, so a configuration logged or dumped whole
/// cannot leak it. `expose` is the one way to the value.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(empty)"
        } else {
            "Secret(…)"
        })
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

/// Prefix that makes a leaked token recognisable to secret scanners.
const TOKEN_PREFIX: &str = "wrn_";
/// The same for client tokens (what an agent's clients present).
const CLIENT_TOKEN_PREFIX: &str = "wcl_";
/// The same for admin tokens (what the admin API asks for).
const ADMIN_TOKEN_PREFIX: &str = "wad_";

/// Longest client id: fits a DNS label (63) with room to spare in the schema.
pub const MAX_CLIENT_ID: usize = 63;

/// Checks that `id` can name an agent everywhere it appears (query string, header,
/// subdomain, database key): 1–63 of `a-z A-Z 0-9 - _ .`, not starting with `-`/`.`.
pub fn check_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_CLIENT_ID {
        return Err(format!(
            "client id must be 1 to {MAX_CLIENT_ID} characters, got {}",
            id.len()
        ));
    }
    if id.starts_with(['-', '.']) {
        return Err("client id must not start with '-' or '.'".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "client id may only hold letters, digits, '-', '_' and '.'; found {c:?}"
        ));
    }
    Ok(())
}

pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// Adds a client token for `client_id`'s clients; returns it (shown once).
/// From then on, that agent answers only clients presenting one of its
/// client tokens.
pub async fn issue_client_token(
    registry: &Registry,
    client_id: &str,
) -> Result<String, IssueError> {
    check_client_id(client_id).map_err(IssueError::BadClientId)?;
    let bytes: [u8; 32] = rand::random();
    let token = format!("{CLIENT_TOKEN_PREFIX}{}", hex::encode(bytes));
    registry
        .add_client_token(client_id, &hash_token(&token))
        .await?;
    Ok(token)
}

/// Creates or replaces the admin token called `name`; returns it (shown
/// once). The admin API answers only requests presenting an admin token.
pub async fn issue_admin_token(registry: &Registry, name: &str) -> Result<String, IssueError> {
    check_client_id(name)
        .map_err(|why| IssueError::BadClientId(format!("admin token name: {why}")))?;
    let bytes: [u8; 32] = rand::random();
    let token = format!("{ADMIN_TOKEN_PREFIX}{}", hex::encode(bytes));
    registry.set_admin_token(name, &hash_token(&token)).await?;
    Ok(token)
}

/// Whether `presented` is one of the tokens (client or admin) whose hashes
/// are given; every hash is compared, in constant time.
pub fn matches_any(hashes: &[String], presented: &str) -> bool {
    let hash = hash_token(presented);
    hashes.iter().fold(false, |found, stored| {
        found | bool::from(stored.as_bytes().ct_eq(hash.as_bytes()))
    })
}

/// The stored form of a token: its SHA-256, as 64 hex digits.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates or rotates `client_id`'s token; returns the new token (shown once).
pub async fn issue_token(registry: &Registry, client_id: &str) -> Result<String, IssueError> {
    check_client_id(client_id).map_err(IssueError::BadClientId)?;
    let token = generate_token();
    registry
        .set_token_hash(client_id, &hash_token(&token))
        .await?;
    Ok(token)
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("invalid client id: {0}")]
    BadClientId(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    BadToken,
    UnknownClient,
}

/// Checks an agent's token against the stored hash.
pub async fn verify_token(
    registry: &Registry,
    client_id: &str,
    token: &str,
) -> Result<Verdict, RegistryError> {
    // Hash before the lookup so both outcomes cost the same work.
    let presented = hash_token(token);
    Ok(match registry.token_hash(client_id).await? {
        None => Verdict::UnknownClient,
        Some(stored) if bool::from(stored.as_bytes().ct_eq(presented.as_bytes())) => {
            Verdict::Accepted
        }
        Some(_) => Verdict::BadToken,
    })
}

#[cfg(test)]
mod secret_tests {
    use super::Secret;

    #[test]
    fn a_secret_does_not_print_itself() {
        let s = Secret::from("wrn_very-secret");
        assert!(!format!("{s:?}").contains("very-secret"));
        assert_eq!(s.expose(), "wrn_very-secret");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        assert!(check_client_id("music-box_01.home").is_ok());
        assert!(check_client_id("").is_err());
        assert!(check_client_id("-x").is_err());
        assert!(check_client_id("a/b").is_err());
        assert!(check_client_id("a b").is_err());
        assert!(check_client_id(&"x".repeat(64)).is_err());
    }

    #[test]
    fn tokens_are_unique_and_hash_stably() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
