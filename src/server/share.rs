//! Each client address's share of an agent: the requests one address has in
//! flight to one agent (HTTP and WebSocket pass-through, each holding a
//! tunnel stream until its body ends), capped by `--max-requests-per-ip`, so
//! a client that opens downloads and never reads them cannot take every
//! stream of the agent from its other clients. An IPv6 client counts by
//! its /64 (one subscriber's prefix), or the cap would be one address away.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// Requests in flight per address and agent: each address (usually one
/// agent's client) with a short list of the agents it has requests to.
/// Keyed so that taking and giving back a place allocates nothing while
/// the address has requests in flight (a `String` key cost two
/// allocations per request).
pub(super) struct Shares {
    limit: usize,
    held: Mutex<HashMap<IpAddr, Vec<AgentCount>>>,
}

/// An agent's client id and how many requests the address has in flight to it.
type AgentCount = (Arc<str>, usize);

/// One request's place in its address's share; given back when dropped
/// (with the response body, which holds the stream).
pub(super) struct Share {
    shares: Arc<Shares>,
    /// `None` when uncounted (no limit).
    key: Option<(Arc<str>, IpAddr)>,
}

impl Shares {
    /// `limit` requests per address and agent; 0 for no limit.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Shares {
            limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A place for one more request from `ip` to `client_id`'s agent, or
    /// `None` when that address already has `limit` in flight. (The map
    /// holds only addresses with requests in flight: bounded by them.)
    pub fn take(self: &Arc<Self>, client_id: &str, ip: IpAddr) -> Option<Share> {
        if self.limit == 0 {
            // Uncounted: dropping it gives nothing back.
            return Some(Share {
                shares: self.clone(),
                key: None,
            });
        }
        let ip = counted_as(ip);
        let mut held = self.held.lock().expect("shares lock");
        let agents = held.entry(ip).or_default();
        let id = match agents.iter_mut().find(|(id, _)| &**id == client_id) {
            Some((id, n)) => {
                if *n >= self.limit {
                    return None;
                }
                *n += 1;
                id.clone()
            }
            None => {
                let id: Arc<str> = client_id.into();
                agents.push((id.clone(), 1));
                id
            }
        };
        Some(Share {
            shares: self.clone(),
            key: Some((id, ip)),
        })
    }

    #[cfg(test)]
    fn in_flight(&self, client_id: &str, ip: IpAddr) -> usize {
        let held = self.held.lock().expect("shares lock");
        held.get(&counted_as(ip))
            .and_then(|agents| agents.iter().find(|(id, _)| &**id == client_id))
            .map_or(0, |(_, n)| *n)
    }
}

/// The address a client counts as: itself, or its /64 for IPv6 (an
/// IPv4-mapped address counts as the IPv4 one).
fn counted_as(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let Some((id, ip)) = &self.key else { return };
        let mut held = self.shares.held.lock().expect("shares lock");
        let Some(agents) = held.get_mut(ip) else {
            return;
        };
        if let Some(at) = agents
            .iter()
            .position(|(held_id, _)| Arc::ptr_eq(held_id, id))
        {
            agents[at].1 -= 1;
            if agents[at].1 == 0 {
                agents.swap_remove(at);
            }
        }
        if agents.is_empty() {
            held.remove(ip);
        }
    }
}

impl crate::body::Meter for Share {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_share_and_no_more() {
        let shares = Shares::new(2);
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let a = shares.take("music", ip).unwrap();
        let _b = shares.take("music", ip).unwrap();
        assert!(shares.take("music", ip).is_none(), "the third waits");
        // Another agent, another address: their own shares.
        assert!(shares.take("rooms", ip).is_some());
        assert!(shares
            .take("music", "203.0.113.8".parse().unwrap())
            .is_some());
        drop(a);
        assert!(shares.take("music", ip).is_some(), "a place given back");
    }

    #[test]
    fn ipv6_counts_by_its_64_and_the_map_empties() {
        let shares = Shares::new(1);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let held = shares.take("music", one).unwrap();
        assert!(shares.take("music", same_64).is_none());
        assert!(shares.take("music", other_64).is_some());
        let mapped: IpAddr = "::ffff:198.51.100.1".parse().unwrap();
        let _v4 = shares
            .take("music", "198.51.100.1".parse().unwrap())
            .unwrap();
        assert!(
            shares.take("music", mapped).is_none(),
            "mapped is the IPv4 one"
        );
        drop(held);
        assert_eq!(shares.in_flight("music", one), 0);
        assert_eq!(
            shares.held.lock().unwrap().len(),
            1,
            "only the IPv4 one left"
        );
    }
}
