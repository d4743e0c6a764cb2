//! Where the control plane is: a comma-separated list of `https://` URLs
//! (replicas on etcd), each naming an address or a host name that may
//! resolve to several — every address counts as one replica. Both the
//! sidecar and weftctl parse `--control-plane` here, resolve it, and try
//! the addresses in a **preference order of their own**: rendezvous
//! (highest-random-weight) hashing of each address with a seed drawn per
//! client. So 10,000 sidecars given the same list spread evenly over the
//! replicas instead of all landing on the first; when one replica goes,
//! only its clients move, and they spread evenly over the rest (each
//! one's next choice is its own); and a re-resolved name that gained or
//! lost an address keeps everyone else's order. (Linkerd's and Envoy's
//! clients balance requests over a resolved set; Consul's agents shuffle
//! the server list; a hash order gives the same spread without state.)

use std::net::{IpAddr, SocketAddr};

/// The control plane's port when a URL names none.
pub const DEFAULT_PORT: u16 = 15012;

/// One entry of the list, well formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// As given (for messages).
    pub text: String,
    pub host: String,
    pub port: u16,
}

/// The list as given, every entry checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneList {
    entries: Vec<Entry>,
}

/// A bad list: every bad entry is named with its reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("no control-plane address given (expected https://HOST:PORT[,https://HOST:PORT...])")]
    Empty,
    #[error("{}", describe(.0))]
    BadEntries(Vec<(String, String)>),
}

fn describe(bad: &[(String, String)]) -> String {
    bad.iter()
        .map(|(entry, reason)| format!("{entry:?}: {reason}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ControlPlaneList {
    /// Parses `https://a:15012,https://b:15012` (spaces around commas
    /// allowed; a URL without a port means [`DEFAULT_PORT`]).
    pub fn parse(text: &str) -> Result<Self, ListError> {
        if text.trim().is_empty() {
            return Err(ListError::Empty);
        }
        let mut entries: Vec<Entry> = Vec::new();
        let mut bad = Vec::new();
        for (i, raw) in text.split(',').enumerate() {
            let raw = raw.trim();
            match parse_entry(raw) {
                Ok(e) if entries.iter().any(|x| x.host == e.host && x.port == e.port) => {
                    bad.push((raw.to_string(), "given twice".to_string()))
                }
                Ok(e) => entries.push(e),
                Err(reason) if raw.is_empty() => {
                    bad.push((format!("entry {}", i + 1), reason.to_string()))
                }
                Err(reason) => bad.push((raw.to_string(), reason.to_string())),
            }
        }
        if bad.is_empty() {
            Ok(ControlPlaneList { entries })
        } else {
            Err(ListError::BadEntries(bad))
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Every address, names resolved now (an address per A/AAAA record),
    /// in no particular order; and the entries that did not resolve.
    pub async fn resolve(&self) -> (Vec<Candidate>, Vec<(String, String)>) {
        let mut found: Vec<Candidate> = Vec::new();
        let mut failed = Vec::new();
        for e in &self.entries {
            let addrs: Vec<SocketAddr> = match e.host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, e.port)],
                Err(_) => match tokio::net::lookup_host((e.host.as_str(), e.port)).await {
                    Ok(a) => a.collect(),
                    Err(err) => {
                        failed.push((e.text.clone(), err.to_string()));
                        continue;
                    }
                },
            };
            for addr in addrs {
                if !found.iter().any(|c| c.addr == addr) {
                    found.push(Candidate {
                        addr,
                        entry: e.text.clone(),
                    });
                }
            }
        }
        (found, failed)
    }
}

fn parse_entry(raw: &str) -> Result<Entry, &'static str> {
    if raw.is_empty() {
        return Err("empty (two commas, or a comma at an end)");
    }
    if raw.starts_with("http://") {
        return Err("the control plane serves TLS: use https://");
    }
    let Some(rest) = raw.strip_prefix("https://") else {
        return Err("must be a URL such as https://127.0.0.1:15012");
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err("only https://HOST[:PORT]: no path, query or user");
    }
    let (host, port) = match authority.rsplit_once(':') {
        // `[::1]:15012`, `host:15012`; a bare IPv6 address needs brackets.
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.starts_with('[')) => {
            let port = p
                .parse::<u16>()
                .map_err(|_| "the port is not a number from 1 to 65535")?;
            if port == 0 {
                return Err("the port is not a number from 1 to 65535");
            }
            (h, port)
        }
        Some(_) if !authority.starts_with('[') => {
            return Err("an IPv6 address goes in brackets: https://[::1]:15012");
        }
        _ => (authority, DEFAULT_PORT),
    };
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => {
            v6.parse::<std::net::Ipv6Addr>()
                .map_err(|_| "not an IPv6 address in brackets")?;
            v6
        }
        None => host,
    };
    let valid_name = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if host.is_empty() || !(valid_name || host.parse::<IpAddr>().is_ok()) {
        return Err("the host is not an IP address or a DNS name");
    }
    Ok(Entry {
        text: raw.to_string(),
        host: host.to_string(),
        port,
    })
}

/// One address to try: a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub addr: SocketAddr,
    /// The entry it came from (a name resolves to several).
    pub entry: String,
}

impl Candidate {
    /// The URL to dial. The TLS check is the control plane's SPIFFE ID,
    /// not a DNS name, so an address works as well as the name.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.entry.trim_end_matches('/') == self.url() {
            write!(f, "{}", self.url())
        } else {
            write!(f, "{} ({})", self.url(), self.entry)
        }
    }
}

/// Orders `candidates` as the client with `seed` prefers them: by a
/// rendezvous hash of (seed, address), highest first.
pub fn preference_order(candidates: &mut [Candidate], seed: u64) {
    candidates.sort_by_cached_key(|c| std::cmp::Reverse(weight(seed, &c.addr)));
}

/// The rendezvous weight: FNV-1a of the address, mixed with the seed by a
/// splitmix64 finaliser (so that nearby seeds give unrelated orders).
fn weight(seed: u64, addr: &SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in addr.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(l: &ControlPlaneList) -> Vec<(String, u16)> {
        l.entries()
            .iter()
            .map(|e| (e.host.clone(), e.port))
            .collect()
    }

    #[test]
    fn a_list_of_urls_parses_with_default_port_and_ipv6() {
        let l = ControlPlaneList::parse(
            "https://10.0.0.1:15012, https://cp.weft.svc:9000/,https://[::1]:15012,https://cp-b",
        )
        .expect("valid");
        assert_eq!(
            hosts(&l),
            vec![
                ("10.0.0.1".to_string(), 15012),
                ("cp.weft.svc".to_string(), 9000),
                ("::1".to_string(), 15012),
                ("cp-b".to_string(), DEFAULT_PORT),
            ]
        );
    }

    #[test]
    fn every_bad_entry_is_named_with_its_reason() {
        let e = ControlPlaneList::parse(
            "https://ok:1,http://plain:15012,,cp:15012,https://a:99999,https://::1:5,https://x/path,https://ok:1,https://bad_name:1",
        )
        .expect_err("bad");
        let text = e.to_string();
        for part in [
            "\"http://plain:15012\": the control plane serves TLS",
            "\"entry 3\": empty",
            "\"cp:15012\": must be a URL",
            "\"https://a:99999\": the port",
            "\"https://::1:5\": an IPv6 address goes in brackets",
            "\"https://x/path\": only https://HOST[:PORT]",
            "\"https://ok:1\": given twice",
            "\"https://bad_name:1\": the host is not",
        ] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        assert!(!text.contains("\"https://ok:1\": the"), "{text}");
        assert_eq!(ControlPlaneList::parse(" "), Err(ListError::Empty));
    }

    #[tokio::test]
    async fn addresses_resolve_and_a_name_counts_as_each_of_its_addresses() {
        let l = ControlPlaneList::parse("https://127.0.0.1:1,https://localhost:2").expect("valid");
        let (found, failed) = l.resolve().await;
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(found[0].url(), "https://127.0.0.1:1");
        assert_eq!(found[0].to_string(), "https://127.0.0.1:1");
        let local: Vec<_> = found.iter().filter(|c| c.addr.port() == 2).collect();
        assert!(!local.is_empty(), "{found:?}");
        assert!(local.iter().all(|c| c.addr.ip().is_loopback()), "{found:?}");
        assert!(local[0].to_string().ends_with("(https://localhost:2)"));
        let bad = ControlPlaneList::parse("https://no-such-host.invalid:1").expect("valid");
        let (found, failed) = bad.resolve().await;
        assert!(found.is_empty());
        assert_eq!(failed[0].0, "https://no-such-host.invalid:1");
    }

    fn three() -> Vec<Candidate> {
        (1..=3)
            .map(|i| Candidate {
                addr: format!("10.0.0.{i}:15012").parse().expect("addr"),
                entry: format!("https://10.0.0.{i}:15012"),
            })
            .collect()
    }

    #[test]
    fn clients_spread_evenly_and_a_lost_replicas_clients_spread_over_the_rest() {
        let mut first = [0usize; 3];
        let mut second_of_first = [[0usize; 3]; 3];
        let n = 9_000u64;
        for seed in 0..n {
            let mut c = three();
            preference_order(&mut c, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let idx = |k: usize| {
                usize::from(c[k].addr.ip().to_string().ends_with('2'))
                    + 2 * usize::from(c[k].addr.ip().to_string().ends_with('3'))
            };
            first[idx(0)] += 1;
            second_of_first[idx(0)][idx(1)] += 1;
        }
        for (i, f) in first.iter().enumerate() {
            assert!((2_700..3_300).contains(f), "replica {i}: {f} of {n} first");
            // Its clients' next choice: the other two, about half each.
            let nexts: Vec<usize> = (0..3)
                .filter(|&j| j != i)
                .map(|j| second_of_first[i][j])
                .collect();
            for x in nexts {
                assert!(x * 10 > f * 4 && x * 10 < f * 6, "{second_of_first:?}");
            }
        }
        // Stable: the same seed, the same order, whatever order it came in;
        // without one address, the others keep their order.
        let mut a = three();
        let mut b = three();
        b.reverse();
        preference_order(&mut a, 42);
        preference_order(&mut b, 42);
        assert_eq!(a, b);
        let gone = a[1].clone();
        let mut fewer: Vec<Candidate> = three().into_iter().filter(|c| *c != gone).collect();
        preference_order(&mut fewer, 42);
        let kept: Vec<Candidate> = a.into_iter().filter(|c| *c != gone).collect();
        assert_eq!(fewer, kept);
    }
}
