//! What a rule does besides choosing backends: the Gateway API's filters.
//! Header modifiers (set, add, remove) on the request or the response, a
//! URL rewrite (the authority, the whole path or the matched prefix), and
//! mirrors (a copy of the request to another backend). Checked when built;
//! applied by the sidecar per request.

use std::borrow::Cow;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;

use super::matching::PathMatch;
use crate::name::ServiceName;

/// A filter that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("{0:?} is not an HTTP header name")]
    HeaderName(String),
    #[error("the value of {0} is not a valid header value")]
    HeaderValue(String),
    #[error("{0} is the mesh's own header and cannot be changed")]
    Reserved(String),
    #[error("{0:?} is not a host name")]
    Hostname(String),
    #[error("{0:?} is not an absolute path (it must start with '/' and hold no '?' or '#')")]
    Path(String),
    #[error("a prefix can only be replaced when the rule matches by path prefix")]
    PrefixWithoutPrefixMatch,
    #[error("the mirror's percent must be between 1 and 100, not {0}")]
    Percent(u32),
    #[error("subset {0:?} is not a subset name")]
    Subset(String),
}

/// Headers only the mesh sets: a route may not forge a caller's identity.
const RESERVED: [&str; 2] = ["x-weft-peer-identity", "x-weft-orig-proto"];

fn header_name(n: &str) -> Result<HeaderName, FilterError> {
    let name =
        HeaderName::from_bytes(n.as_bytes()).map_err(|_| FilterError::HeaderName(n.into()))?;
    if RESERVED.contains(&name.as_str()) || name.as_str().starts_with(':') {
        return Err(FilterError::Reserved(name.to_string()));
    }
    Ok(name)
}

fn header(n: &str, v: &str) -> Result<(HeaderName, HeaderValue), FilterError> {
    let name = header_name(n)?;
    let value = HeaderValue::from_str(v).map_err(|_| FilterError::HeaderValue(n.into()))?;
    Ok((name, value))
}

/// `RequestHeaderModifier` / `ResponseHeaderModifier`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderModifier {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderModifier {
    pub fn new(
        set: &[(&str, &str)],
        add: &[(&str, &str)],
        remove: &[&str],
    ) -> Result<Self, FilterError> {
        Ok(HeaderModifier {
            set: set
                .iter()
                .map(|(n, v)| header(n, v))
                .collect::<Result<_, _>>()?,
            add: add
                .iter()
                .map(|(n, v)| header(n, v))
                .collect::<Result<_, _>>()?,
            remove: remove
                .iter()
                .map(|n| header_name(n))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Remove, then set (replacing), then add (appending): the order the
    /// Gateway API gives them.
    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }
}

/// How a rewrite changes the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    Full(String),
    /// Replaces what the rule's path prefix matched.
    Prefix(String),
}

/// `URLRewrite`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UrlRewrite {
    pub hostname: Option<Authority>,
    pub path: Option<PathRewrite>,
}

fn rewrite_path(p: &str) -> Result<String, FilterError> {
    if !p.starts_with('/') || p.contains(['?', '#']) || p.len() > super::matching::MAX_VALUE {
        return Err(FilterError::Path(p.to_string()));
    }
    Ok(p.to_string())
}

impl UrlRewrite {
    pub fn new(hostname: Option<&str>, path: Option<PathRewrite>) -> Result<Self, FilterError> {
        let hostname = hostname
            .map(|h| {
                // A host name (letters, digits, '-', '.'), as an authority.
                let ok = !h.is_empty()
                    && h.len() <= 253
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
                ok.then(|| Authority::try_from(h).ok())
                    .flatten()
                    .ok_or_else(|| FilterError::Hostname(h.to_string()))
            })
            .transpose()?;
        let path = match path {
            Some(PathRewrite::Full(p)) => Some(PathRewrite::Full(rewrite_path(&p)?)),
            Some(PathRewrite::Prefix(p)) => Some(PathRewrite::Prefix(rewrite_path(&p)?)),
            None => None,
        };
        Ok(UrlRewrite { hostname, path })
    }

    /// Checks that a prefix replacement has a prefix to replace in every
    /// match of its rule.
    pub fn check_matches<'a>(
        &self,
        mut paths: impl Iterator<Item = &'a PathMatch>,
    ) -> Result<(), FilterError> {
        match &self.path {
            Some(PathRewrite::Prefix(_)) if !paths.all(|p| matches!(p, PathMatch::Prefix(_))) => {
                Err(FilterError::PrefixWithoutPrefixMatch)
            }
            _ => Ok(()),
        }
    }

    /// The new path for `path`, which `matched` matched. A query, if any,
    /// is the caller's to keep.
    pub fn path<'a>(&self, path: &'a str, matched: Option<&PathMatch>) -> Cow<'a, str> {
        match (&self.path, matched) {
            (Some(PathRewrite::Full(p)), _) => Cow::Owned(p.clone()),
            (Some(PathRewrite::Prefix(with)), Some(PathMatch::Prefix(prefix))) => {
                let rest = if prefix == "/" {
                    path
                } else {
                    &path[prefix.len().min(path.len())..]
                };
                // `/xyz` → `/` on `/xyz/abc` gives `/abc`, not `//abc`.
                let rest = if with.ends_with('/') {
                    rest.trim_start_matches('/')
                } else {
                    rest
                };
                let joined = format!("{with}{rest}");
                Cow::Owned(if joined.is_empty() {
                    "/".to_string()
                } else {
                    joined
                })
            }
            _ => Cow::Borrowed(path),
        }
    }
}

/// A rule's backend: a service, or one of its subsets, and its weight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendRef {
    pub service: ServiceName,
    /// One of the service's `spec.subsets`; `None`: all its endpoints.
    pub subset: Option<String>,
    /// The share of the rule's requests (relative to the others'); 0: none.
    pub weight: u32,
}

impl BackendRef {
    pub fn new(
        service: ServiceName,
        subset: Option<&str>,
        weight: u32,
    ) -> Result<Self, FilterError> {
        let subset = subset
            .filter(|s| !s.is_empty())
            .map(|s| {
                ServiceName::parse(s)
                    .map(|_| s.to_string())
                    .map_err(|_| FilterError::Subset(s.to_string()))
            })
            .transpose()?;
        Ok(BackendRef {
            service,
            subset,
            weight,
        })
    }
}

/// `RequestMirror`: a copy of a share of the requests, answered by nobody.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub backend: BackendRef,
    /// 1..=100.
    pub percent: u32,
}

impl Mirror {
    pub fn new(backend: BackendRef, percent: u32) -> Result<Self, FilterError> {
        let percent = if percent == 0 { 100 } else { percent };
        if percent > 100 {
            return Err(FilterError::Percent(percent));
        }
        Ok(Mirror { backend, percent })
    }
}

/// Everything a rule may do to a request besides choosing its backend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filters {
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    pub rewrite: Option<UrlRewrite>,
    pub mirrors: Vec<Mirror>,
    pub rate_limit: Option<super::RateLimit>,
    pub cors: Option<super::Cors>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self == &Filters::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_removed_then_set_then_added() {
        let m = HeaderModifier::new(&[("x-env", "canary")], &[("x-hop", "2")], &["x-secret"])
            .expect("modifier");
        let mut h = HeaderMap::new();
        h.insert("x-env", "prod".parse().expect("v"));
        h.insert("x-hop", "1".parse().expect("v"));
        h.insert("x-secret", "s".parse().expect("v"));
        m.apply(&mut h);
        assert_eq!(h["x-env"], "canary");
        assert_eq!(h.get_all("x-hop").iter().count(), 2);
        assert!(h.get("x-secret").is_none());
        assert!(matches!(
            HeaderModifier::new(&[("x-weft-peer-identity", "spiffe://x")], &[], &[]),
            Err(FilterError::Reserved(_))
        ));
        assert!(HeaderModifier::new(&[("bad name", "v")], &[], &[]).is_err());
    }

    #[test]
    fn prefix_rewrites_follow_the_gateway_api_examples() {
        let p = |prefix: &str| PathMatch::prefix(prefix).expect("prefix");
        let r = |with: &str| {
            UrlRewrite::new(None, Some(PathRewrite::Prefix(with.into()))).expect("rewrite")
        };
        let xyz = p("/xyz");
        for (path, want) in [
            ("/xyz", "/foo"),
            ("/xyz/", "/foo/"),
            ("/xyz/abc", "/foo/abc"),
        ] {
            assert_eq!(r("/foo").path(path, Some(&xyz)), want, "{path}");
        }
        for (path, want) in [("/xyz", "/"), ("/xyz/", "/"), ("/xyz/abc", "/abc")] {
            assert_eq!(r("/").path(path, Some(&xyz)), want, "{path}");
        }
        assert_eq!(r("/api").path("/users/1", Some(&p("/"))), "/api/users/1");
        let full = UrlRewrite::new(
            Some("users.internal"),
            Some(PathRewrite::Full("/v2/users".into())),
        )
        .expect("rewrite");
        assert_eq!(full.path("/anything", None), "/v2/users");
        assert_eq!(
            full.hostname.as_ref().map(|a| a.as_str()),
            Some("users.internal")
        );
        assert_eq!(
            r("/foo").check_matches([&PathMatch::exact("/a").expect("e")].into_iter()),
            Err(FilterError::PrefixWithoutPrefixMatch)
        );
        assert!(UrlRewrite::new(Some("bad host!"), None).is_err());
    }

    #[test]
    fn mirrors_and_backends() {
        let svc = ServiceName::parse("users").expect("name");
        let b = BackendRef::new(svc.clone(), Some("v2"), 10).expect("backend");
        assert_eq!(b.subset.as_deref(), Some("v2"));
        assert!(BackendRef::new(svc.clone(), Some("V 2"), 1).is_err());
        assert_eq!(Mirror::new(b.clone(), 0).expect("mirror").percent, 100);
        assert_eq!(Mirror::new(b, 101), Err(FilterError::Percent(101)));
    }
}
