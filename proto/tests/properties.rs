//! Property tests of the parsers both programs share, fed random input and
//! mutations of valid input: each returns a value or an error, never
//! panics, and what it accepts prints back to the same text.
//!
//! `PROPTEST_CASES=100000 cargo test -p weft-proto --test properties` runs
//! more cases than CI's default.

use proptest::prelude::*;
use weft_proto::duration::{format_duration, parse_duration};
use weft_proto::identity::{JoinToken, SpiffeId, certs_from_pem, pem};
use weft_proto::labels::{parse_label, validate_label};
use weft_proto::mutate::{OPS, mutate};
use weft_proto::name::{ServiceName, validate_address, validate_instance_id};
use weft_proto::pattern::MethodPattern;
use weft_proto::retry::RetryConditions;
use weft_proto::routing::{PathMatch, PathRewrite, UrlRewrite};

/// Up to `n` edits of [`weft_proto::mutate::edit`].
fn edits(n: usize) -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
    prop::collection::vec((0..OPS, any::<usize>(), any::<u8>()), 0..n)
}

/// Text: random, or one of `valid` mutated.
fn text_near(valid: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        (prop::sample::select(valid), edits(6))
            .prop_map(|(v, e)| String::from_utf8_lossy(&mutate(v.as_bytes(), &e)).into_owned()),
    ]
}

fn token() -> JoinToken {
    JoinToken {
        td: "weft.local".into(),
        id: "0123abcd".into(),
        secret: "s3cr3t".into(),
        ca: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
    }
}

proptest! {
    #[test]
    fn join_tokens_decode_or_refuse(s in prop_oneof![
        any::<String>(),
        edits(6).prop_map(|e| String::from_utf8_lossy(&mutate(token().encode().as_bytes(), &e)).into_owned()),
    ]) {
        if let Some(t) = JoinToken::decode(&s) {
            // What decodes encodes to a token that decodes the same.
            prop_assert_eq!(JoinToken::decode(&t.encode()), Some(t));
        }
    }

    #[test]
    fn join_tokens_round_trip(td in ".{0,40}", id in ".{0,40}", secret in ".{0,80}", ca in ".{0,64}") {
        let t = JoinToken { td, id, secret, ca };
        prop_assert_eq!(JoinToken::decode(&t.encode()), Some(t));
    }

    #[test]
    fn spiffe_ids_print_back_as_parsed(s in text_near(&[
        "spiffe://weft.local/service/user-service",
        "spiffe://example.org/control-plane",
    ])) {
        if let Ok(id) = SpiffeId::parse(&s) {
            prop_assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn pem_certificates_are_read_or_refused(der in prop::collection::vec(any::<u8>(), 0..300), e in edits(8)) {
        let text = String::from_utf8_lossy(&mutate(pem("CERTIFICATE", &der).as_bytes(), &e)).into_owned();
        if let Ok(certs) = certs_from_pem(&text) {
            prop_assert!(!certs.is_empty());
        }
        // Unmutated, the DER comes back as it went in.
        let back = certs_from_pem(&pem("CERTIFICATE", &der));
        prop_assert_eq!(back.ok().map(|c| c[0].to_vec()), Some(der));
    }

    #[test]
    fn durations_parse_or_refuse_and_print_back(s in text_near(&["10s", "250ms", "5m", "2h", "0s"])) {
        if let Ok(d) = parse_duration(&s) {
            prop_assert_eq!(parse_duration(&format_duration(d)).ok(), Some(d));
        }
    }

    #[test]
    fn whole_milliseconds_round_trip(ms in any::<u64>()) {
        let d = std::time::Duration::from_millis(ms);
        prop_assert_eq!(parse_duration(&format_duration(d)).ok(), Some(d));
    }

    #[test]
    fn names_addresses_and_patterns_parse_or_refuse(s in text_near(&[
        "user-service", "order.v2", "127.0.0.1:15006", "[::1]:80", "host.example:9000",
        "/pkg.Svc/Method", "/pkg.*/Get*", "*", "version=v2", "unavailable",
    ])) {
        if let Ok(n) = ServiceName::parse(&s) {
            prop_assert_eq!(n.as_str(), s.as_str());
        }
        if let Ok(p) = MethodPattern::parse(&s) {
            prop_assert_eq!(p.to_string(), s.clone());
            let _ = p.matches(&s);
        }
        let _ = validate_address(&s);
        let _ = validate_instance_id(&s);
        if let Ok((k, v)) = parse_label(&s) {
            prop_assert!(validate_label(&k, &v).is_ok());
        }
        if let Ok(c) = RetryConditions::parse(&[s.as_str()]) {
            let names: Vec<String> = c.iter().map(|x| x.to_string()).collect();
            prop_assert_eq!(RetryConditions::parse(&names).ok(), Some(c));
        }
    }

    /// A route's path prefix matches the path it names and what lies below
    /// it, segment by segment, and nothing else; a prefix rewrite of a
    /// path it matched puts the replacement's segments before what followed
    /// the prefix, whatever bytes those are (Gateway API `ReplacePrefixMatch`).
    #[test]
    fn prefix_rewrites_keep_what_follows_the_prefix(
        prefix in "(/[a-z]{1,3}){1,3}/?|/",
        rest in prop_oneof![Just(String::new()), "(/[a-zé%~ .-]{0,3}){1,3}/?"],
        with in "(/[a-z]{1,3}){1,2}/?|/",
        near in any::<String>(),
    ) {
        let m = PathMatch::prefix(&prefix).expect("a valid prefix");
        let base = prefix.trim_end_matches('/');
        let path = format!("{base}{rest}");
        let path = if path.is_empty() { "/".to_string() } else { path };
        prop_assert!(m.matches(&path), "{prefix} should match {path}");
        // Another path matches only if it is the prefix or lies below it.
        let below = near.strip_prefix(base).is_some_and(|r| r.is_empty() || r.starts_with('/'));
        prop_assert_eq!(m.matches(&near), base.is_empty() || below, "{} on {:?}", prefix, near);

        let rewrite = UrlRewrite::new(None, Some(PathRewrite::Prefix(with.clone())))
            .expect("a valid replacement");
        let out = rewrite.path(&path, Some(&m));
        let segments = |s: &str| s.split('/').filter(|x| !x.is_empty()).map(str::to_string).collect::<Vec<_>>();
        prop_assert!(out.starts_with('/'), "{}", out);
        let mut want = segments(&with);
        want.extend(segments(&rest));
        prop_assert_eq!(segments(&out), want, "{} on {} with {}", prefix, path, with);
        // No empty segment is made where none was.
        if !path.contains("//") && !with.contains("//") {
            prop_assert!(!out.contains("//"), "{} on {} with {}: {}", prefix, path, with, out);
        }
    }
}
