//! Revocations made behind the server's back: a token removed straight from
//! the registry (`warren token revoke` without `--admin-url`), or a revoke on
//! another node whose disconnect request did not arrive. Every
//! `revocation_check` the node reads which client ids may still connect and
//! closes its connections of any that may not.

use std::{collections::HashSet, sync::Arc};

use tracing::warn;

use super::{admin::disconnect_here, state::Shared};
use crate::shutdown::Shutdown;

pub(super) async fn sweep(shared: Arc<Shared>, shutdown: Shutdown) {
    let mut clock = shutdown.every(shared.config.revocation_check);
    while clock.tick().await {
        let connected: HashSet<String> = shared
            .agents
            .all()
            .iter()
            .map(|l| l.client_id.clone())
            .collect();
        if connected.is_empty() {
            continue;
        }
        let allowed: HashSet<String> = match shared.registry.agent_ids().await {
            Ok(ids) => ids.into_iter().collect(),
            // A registry outage revokes nobody.
            Err(e) => {
                warn!("revocation check skipped: {e}");
                continue;
            }
        };
        for client_id in connected.difference(&allowed) {
            shared.registered.put(client_id, false);
            disconnect_here(&shared, client_id, "token revoked");
        }
    }
}
