//! Which mesh service an intercepted connection's original destination
//! belongs to: every service's virtual IPs and its instances' IPs, pushed
//! by the control plane and parsed here once, so the data path does one
//! hash lookup and no string work.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use weft_proto::name::ServiceName;
use weft_proto::v1 as pb;

/// A service an address maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub service: ServiceName,
    /// Ports whose protocol speaks first (`spec.opaquePorts`): no detection.
    opaque_ports: Box<[u16]>,
}

impl Mapped {
    pub fn is_opaque(&self, port: u16) -> bool {
        self.opaque_ports.contains(&port)
    }
}

/// The address map as last pushed; empty until the first push.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressMap {
    by_ip: HashMap<IpAddr, Arc<Mapped>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("addresses.services[{index}].service: {name:?} is not a service name")]
    Service { index: usize, name: String },
    #[error("addresses.services[{index}].addresses: {address:?} is not an IP address")]
    Address { index: usize, address: String },
    #[error("addresses.services[{index}].opaque_ports: {port} is not a port")]
    Port { index: usize, port: u32 },
}

impl AddressMap {
    /// Validates a pushed map. An address claimed by two services stays
    /// with the first (the control plane sends them by name), so that the
    /// answer does not depend on hash order.
    pub fn from_proto(p: &pb::AddressMap) -> Result<Self, MapError> {
        let mut by_ip = HashMap::new();
        for (index, s) in p.services.iter().enumerate() {
            let service = ServiceName::parse(&s.service).map_err(|_| MapError::Service {
                index,
                name: s.service.clone(),
            })?;
            let opaque_ports = s
                .opaque_ports
                .iter()
                .map(|&port| match u16::try_from(port) {
                    Ok(p) if p != 0 => Ok(p),
                    _ => Err(MapError::Port { index, port }),
                })
                .collect::<Result<Box<[u16]>, _>>()?;
            let mapped = Arc::new(Mapped {
                service,
                opaque_ports,
            });
            for a in &s.addresses {
                let ip: IpAddr = a.parse().map_err(|_| MapError::Address {
                    index,
                    address: a.clone(),
                })?;
                by_ip.entry(ip).or_insert_with(|| mapped.clone());
            }
        }
        Ok(AddressMap { by_ip })
    }

    /// The service `addr` belongs to, if any (an IPv4-mapped IPv6 address
    /// is looked up as the IPv4 address it is).
    pub fn get(&self, addr: &SocketAddr) -> Option<&Arc<Mapped>> {
        let ip = match addr.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.by_ip.get(&ip)
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(service: &str, addresses: &[&str], opaque: &[u32]) -> pb::ServiceAddresses {
        pb::ServiceAddresses {
            service: service.into(),
            addresses: addresses.iter().map(|a| (*a).to_string()).collect(),
            opaque_ports: opaque.to_vec(),
        }
    }

    #[test]
    fn addresses_map_to_their_service_on_any_port() {
        let map = AddressMap::from_proto(&pb::AddressMap {
            services: vec![
                entry("mysql", &["10.96.0.20", "10.77.0.5"], &[3306]),
                entry("users", &["10.96.0.10", "fd00::10"], &[]),
            ],
        })
        .expect("valid");
        let get = |a: &str| {
            map.get(&a.parse().expect("addr"))
                .map(|m| m.service.to_string())
        };
        assert_eq!(get("10.96.0.10:80").as_deref(), Some("users"));
        assert_eq!(get("10.96.0.10:9000").as_deref(), Some("users"));
        assert_eq!(get("[fd00::10]:80").as_deref(), Some("users"));
        assert_eq!(get("[::ffff:10.77.0.5]:3306").as_deref(), Some("mysql"));
        assert_eq!(get("10.96.0.99:80"), None);
        let mysql = map
            .get(&"10.96.0.20:3306".parse().expect("addr"))
            .expect("mapped");
        assert!(mysql.is_opaque(3306) && !mysql.is_opaque(80));
    }

    #[test]
    fn the_first_service_keeps_a_shared_address() {
        let map = AddressMap::from_proto(&pb::AddressMap {
            services: vec![
                entry("a", &["10.0.0.1"], &[]),
                entry("b", &["10.0.0.1"], &[]),
            ],
        })
        .expect("valid");
        assert_eq!(map.len(), 1);
        let m = map
            .get(&"10.0.0.1:1".parse().expect("addr"))
            .expect("mapped");
        assert_eq!(m.service.as_str(), "a");
    }

    #[test]
    fn bad_entries_are_named() {
        let bad =
            |e| AddressMap::from_proto(&pb::AddressMap { services: vec![e] }).expect_err("bad");
        assert!(
            bad(entry("a", &["10.0.0"], &[]))
                .to_string()
                .contains("\"10.0.0\"")
        );
        assert!(bad(entry("A B", &[], &[])).to_string().contains(".service"));
        assert!(bad(entry("a", &[], &[70000])).to_string().contains("70000"));
    }
}
