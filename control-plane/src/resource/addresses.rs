//! One address, one service. Intercepted connections are mapped to a
//! service by their original destination (`spec.addresses`); if two
//! `Service`s claimed one address, which of them a connection reached
//! would depend on the order a sidecar read them in. An apply that would
//! leave an address claimed twice is refused whole, the error naming both
//! claims, whether the other one is in the same request or already applied.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{FieldError, InvalidResources, Resource};

/// Where an address is claimed: the resource, its place in
/// `spec.addresses`, and the request document it comes from (`None`:
/// already applied).
struct Claim {
    key: String,
    index: usize,
    document: Option<usize>,
}

impl Claim {
    fn describe(&self) -> String {
        let at = format!("{} spec.addresses[{}]", self.key, self.index);
        match self.document {
            Some(d) => format!("{at} (document {})", d + 1),
            None => format!("{at} (already applied)"),
        }
    }
}

/// Checks that no address is claimed by two services once `applied` is
/// laid over `existing` (a service in `applied` replaces the stored one of
/// its name). Each clash is reported on the later claim in the request.
pub fn check_unique_addresses(
    applied: &[Resource],
    existing: &[Resource],
) -> Result<(), InvalidResources> {
    let mut claims: BTreeMap<IpAddr, Claim> = BTreeMap::new();
    // The stored services that this request does not replace come first:
    // a clash with one of them is always the request's doing.
    // A set, not a scan of `applied` per stored resource: an apply into a
    // catalog of 10,000 services stays linear.
    let replaced: std::collections::HashSet<String> = applied.iter().map(Resource::key).collect();
    for r in existing {
        if replaced.contains(&r.key()) {
            continue;
        }
        for (index, ip) in addresses(r).iter().enumerate() {
            claims.entry(*ip).or_insert(Claim {
                key: r.key(),
                index,
                document: None,
            });
        }
    }
    let mut errors = Vec::new();
    for (document, r) in applied.iter().enumerate() {
        for (index, ip) in addresses(r).iter().enumerate() {
            match claims.get(ip) {
                // The same resource twice in one request: the later wins,
                // as it does in the store.
                Some(c) if c.key == r.key() => {}
                Some(c) => errors.push(FieldError {
                    document: document + 1,
                    resource: Some(r.key()),
                    path: format!("spec.addresses[{index}]"),
                    reason: format!(
                        "{ip} is also {}: an address belongs to one service (intercepted \
                         connections to it are mapped by it)",
                        c.describe()
                    ),
                }),
                None => {
                    claims.insert(
                        *ip,
                        Claim {
                            key: r.key(),
                            index,
                            document: Some(document),
                        },
                    );
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(InvalidResources(errors))
    }
}

fn addresses(r: &Resource) -> &[IpAddr] {
    match r {
        Resource::Service(s) => &s.addresses,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::parse_documents;

    fn services(yaml: &str) -> Vec<Resource> {
        if yaml.is_empty() {
            return Vec::new();
        }
        parse_documents(yaml).expect("valid")
    }

    fn service(name: &str, addresses: &str) -> String {
        format!(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\n\
             spec: {{addresses: [{addresses}]}}\n"
        )
    }

    fn errors(applied: &str, existing: &str) -> Vec<String> {
        match check_unique_addresses(&services(applied), &services(existing)) {
            Ok(()) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn two_services_of_one_request_cannot_share_an_address() {
        let applied = [
            service("mysql", "10.96.0.10, 10.96.0.11"),
            service("smtp", "10.96.0.12, 10.96.0.11"),
        ]
        .join("---\n");
        assert_eq!(
            errors(&applied, ""),
            [
                "document 2 (Service/smtp): spec.addresses[1]: 10.96.0.11 is also \
              Service/mysql spec.addresses[1] (document 1): an address belongs to one \
              service (intercepted connections to it are mapped by it)"
            ]
        );
    }

    #[test]
    fn an_address_an_applied_service_holds_is_refused() {
        let existing = service("mysql", "10.96.0.10");
        let e = errors(&service("smtp", "\"fd00::1\", 10.96.0.10"), &existing);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "document 1 (Service/smtp): spec.addresses[1]: 10.96.0.10 is also \
                 Service/mysql spec.addresses[0] (already applied)"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn an_address_moves_when_its_old_owner_gives_it_up_in_the_same_request() {
        let existing = service("mysql", "10.96.0.10");
        let applied = [
            service("mysql", "10.96.0.20"),
            service("smtp", "10.96.0.10"),
        ]
        .join("---\n");
        assert!(errors(&applied, &existing).is_empty());
        // A service re-applied with its own addresses clashes with nothing.
        assert!(errors(&existing, &existing).is_empty());
    }
}
