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

/// Requests in flight per (client id, address).
pub(super) struct Shares {
    limit: usize,
    held: Mutex<HashMap<(String, IpAddr), usize>>,
}

/// One request's place in its address's share; given back when dropped
/// (with the response body, which holds the stream).
pub(super) struct Share {
    shares: Arc<Shares>,
    key: (String, IpAddr),
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
                key: (String::new(), IpAddr::from([0, 0, 0, 0])),
            });
        }
        let key = (client_id.to_string(), counted_as(ip));
        let mut held = self.held.lock().expect("shares lock");
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Share {
            shares: self.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn in_flight(&self, client_id: &str, ip: IpAddr) -> usize {
        let held = self.held.lock().expect("shares lock");
        held.get(&(client_id.to_string(), counted_as(ip)))
            .copied()
            .unwrap_or(0)
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
        if self.shares.limit == 0 {
            return;
        }
        let mut held = self.shares.held.lock().expect("shares lock");
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
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
