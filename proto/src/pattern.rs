//! gRPC method patterns: `/package.Service/Method` where `*` matches any
//! run of characters (`/users.v1.Users/Get*`, `/*.Users/*`, or `*` for
//! every method). Authorization rules and hedging name methods with them;
//! the control plane checks them when a resource is applied, the sidecar
//! matches them against each request's path.

use std::fmt;
use std::str::FromStr;

/// A text that is not a method pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not /package.Service/Method (\"*\" wildcards allowed)")]
pub struct PatternError(pub String);

/// A validated method pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct MethodPattern(String);

impl MethodPattern {
    /// `*`, or `/` + service + `/` + method, where both parts are made of
    /// the characters of protobuf names (letters, digits, `_`, and `.`
    /// between package parts) and `*`.
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        let ok = s == "*"
            || (s.starts_with('/')
                && s.matches('/').count() == 2
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'*')));
        if !ok {
            return Err(PatternError(s.to_string()));
        }
        Ok(MethodPattern(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Glob match with `*` only: the parts between stars are found left to
    /// right, which is exact for a glob and linear in the input for our
    /// short patterns. Allocates nothing (it runs per request).
    pub fn matches(&self, text: &str) -> bool {
        let p = self.0.as_str();
        let (Some((first, _)), Some((_, last))) = (p.split_once('*'), p.rsplit_once('*')) else {
            return p == text;
        };
        if text.len() < first.len() + last.len()
            || !text.starts_with(first)
            || !text.ends_with(last)
        {
            return false;
        }
        let mut rest = &text[first.len()..text.len() - last.len()];
        // Between the first and the last star; nothing with one star.
        let middle = p
            .get(first.len() + 1..p.len() - last.len() - 1)
            .unwrap_or_default();
        for part in middle.split('*').filter(|m| !m.is_empty()) {
            match rest.find(part) {
                Some(i) => rest = &rest[i + part.len()..],
                None => return false,
            }
        }
        true
    }
}

impl FromStr for MethodPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, PatternError> {
        MethodPattern::parse(s)
    }
}

impl fmt::Display for MethodPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> MethodPattern {
        MethodPattern::parse(s).expect("valid pattern")
    }

    #[test]
    fn valid_and_invalid_patterns() {
        for ok in [
            "*",
            "/x.Y/Z",
            "/restaurant.v1.UserService/*",
            "/*.UserService/Get*",
            "/u.Users/Get_User2",
            "/*/*",
        ] {
            assert!(MethodPattern::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "GetUser", "/x.Y", "/x.Y/Z/W", "x.Y/Z", "/x-y.Y/Z", "/x.Y/Z ", "**",
        ] {
            assert_eq!(
                MethodPattern::parse(bad),
                Err(PatternError(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn globs() {
        let m = p("/restaurant.v1.UserService/*");
        assert!(m.matches("/restaurant.v1.UserService/GetUser"));
        assert!(m.matches("/restaurant.v1.UserService/"));
        assert!(!m.matches("/restaurant.v1.OrderService/GetUser"));
        let m = p("/*.UserService/Get*");
        assert!(m.matches("/a.b.UserService/GetUser"));
        assert!(!m.matches("/a.b.UserService/ListUsers"));
        assert!(p("*").matches("/x/y"));
        assert!(p("*").matches(""));
        let exact = p("/x.Y/Z");
        assert!(exact.matches("/x.Y/Z") && !exact.matches("/x.Y/Zz"));
        // Parts between stars are found in order, without overlapping the
        // fixed start and end.
        let m = p("/a*b*c/d");
        assert!(m.matches("/a_b_c/d") && m.matches("/abc/d") && m.matches("/axxbyyc/d"));
        assert!(!m.matches("/a_c_b/d"));
        let m = p("/ab*ba/x");
        assert!(
            !m.matches("/aba/x"),
            "start and end may not share characters"
        );
        assert!(m.matches("/abba/x"));
    }

    /// Every word over `alphabet` up to `max` long.
    fn words(alphabet: &[char], max: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..max {
            last = last
                .iter()
                .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    /// The textbook recursive glob, to check the fast one against.
    fn reference(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            Some((c, rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
        }
    }

    #[test]
    fn matches_like_the_textbook_glob_on_every_small_input() {
        let texts = words(&['a', 'b'], 6);
        for pattern in words(&['a', 'b', '*'], 5) {
            let m = MethodPattern(pattern.clone());
            for t in &texts {
                assert_eq!(
                    m.matches(t),
                    reference(pattern.as_bytes(), t.as_bytes()),
                    "{pattern:?} on {t:?}"
                );
            }
        }
    }

    #[test]
    fn serializes_as_text() {
        assert_eq!(
            serde_json::to_string(&p("/x.Y/*")).expect("serializes"),
            "\"/x.Y/*\""
        );
    }
}
