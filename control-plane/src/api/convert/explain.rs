//! `Explain` and its messages: the request checked into an
//! [`ExplainQuery`], the answer built from an [`Explanation`].

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use weft_proto::v1 as pb;

use crate::catalog::{ExplainQuery, Explanation};
use crate::resource::Name;

/// An `ExplainRequest` that cannot be explained; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainRequestError {
    #[error("from: {0}")]
    From(weft_proto::name::NameError),
    #[error("service: {0}")]
    Service(weft_proto::name::NameError),
    #[error("method: {0:?} is not an HTTP method")]
    Method(String),
    #[error("path: {0:?} must start with /")]
    Path(String),
    #[error("headers[{0}]: not a valid header name and value")]
    Header(usize),
    #[error("host: {0:?} is not a host name")]
    Host(String),
}

impl TryFrom<&pb::ExplainRequest> for ExplainQuery {
    type Error = ExplainRequestError;

    fn try_from(r: &pb::ExplainRequest) -> Result<Self, ExplainRequestError> {
        let from = Name::parse(&r.from).map_err(ExplainRequestError::From)?;
        let service = Name::parse(&r.service).map_err(ExplainRequestError::Service)?;
        let method = Method::from_bytes(r.method.as_bytes())
            .map_err(|_| ExplainRequestError::Method(r.method.clone()))?;
        if !r.path.starts_with('/') {
            return Err(ExplainRequestError::Path(r.path.clone()));
        }
        let (path, query) = match r.path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (r.path.clone(), None),
        };
        let mut headers = HeaderMap::new();
        for (i, h) in r.headers.iter().enumerate() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| ExplainRequestError::Header(i))?;
            let value =
                HeaderValue::from_str(&h.value).map_err(|_| ExplainRequestError::Header(i))?;
            headers.append(name, value);
        }
        // Taken as a request's Host would be: lower case, no port.
        let host = match r.host.as_str() {
            "" => None,
            h => {
                let host = weft_proto::routing::request_host(h);
                let ok = !host.is_empty()
                    && host.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'[' | b']' | b':')
                    });
                if !ok {
                    return Err(ExplainRequestError::Host(r.host.clone()));
                }
                Some(host)
            }
        };
        Ok(ExplainQuery {
            from,
            service,
            method,
            path,
            query,
            headers,
            host,
            gateway: r.gateway,
        })
    }
}

fn index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

impl From<&Explanation> for pb::ExplainResponse {
    fn from(e: &Explanation) -> Self {
        pb::ExplainResponse {
            service: e.service.to_string(),
            routes: e.routes.clone(),
            candidates: e
                .candidates
                .iter()
                .map(|c| pb::RouteCandidate {
                    route: c.route.clone(),
                    rule: index(c.rule),
                    r#match: c.matched.map(index),
                    mismatch: c.mismatch.clone().unwrap_or_default(),
                })
                .collect(),
            taken: e.taken.as_ref().map(|t| pb::TakenRule {
                route: t.route.clone(),
                index: index(t.index),
                rule: Some(pb::RouteRule::from(&t.rule)),
                r#match: t.matched.map(index),
                kind: t.kind.to_wire() as i32,
            }),
            backends: e
                .destinations
                .iter()
                .map(|d| pb::ExplainedBackend {
                    service: d.backend.service.to_string(),
                    subset: d.backend.subset.clone().unwrap_or_default(),
                    weight: d.backend.weight,
                    path: d.path.clone(),
                    allowed: d.verdict.allowed(),
                    authorization: d.verdict.to_string(),
                })
                .collect(),
            grpc: e.grpc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_field_by_field() {
        let good = pb::ExplainRequest {
            from: "orders".into(),
            service: "users".into(),
            method: "GET".into(),
            path: "/api/users?id=1".into(),
            headers: vec![pb::Header {
                name: "X-Canary".into(),
                value: "1".into(),
            }],
            ..Default::default()
        };
        let q = ExplainQuery::try_from(&good).expect("valid");
        assert_eq!(
            (q.path.as_str(), q.query.as_deref()),
            ("/api/users", Some("id=1"))
        );
        assert_eq!(q.headers["x-canary"], "1");
        let bad = |f: fn(&mut pb::ExplainRequest)| {
            let mut r = good.clone();
            f(&mut r);
            ExplainQuery::try_from(&r).expect_err("invalid").to_string()
        };
        assert!(bad(|r| r.from = "Bad".into()).starts_with("from: "));
        assert!(bad(|r| r.method = "G T".into()).starts_with("method: "));
        assert!(bad(|r| r.path = "api".into()).starts_with("path: "));
        assert!(bad(|r| r.headers[0].name = "bad name".into()).starts_with("headers[0]"));
    }
}
