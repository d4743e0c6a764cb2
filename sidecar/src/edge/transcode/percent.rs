//! Percent-decoding of request paths and query strings (RFC 3986 §2.1):
//! a path variable that spans several segments keeps `%2F` encoded, as the
//! `google.api.http` rules for reserved expansion ask, so that a slash the
//! client escaped stays distinct from a segment separator.

use thiserror::Error;

/// How a piece of a URL is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One path segment: every escape decoded.
    Segment,
    /// Several path segments: every escape but `%2F` decoded.
    Segments,
    /// A query name or value (`application/x-www-form-urlencoded`): `+`
    /// is a space, every escape decoded.
    Form,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("'%' not followed by two hex digits")]
    BadEscape,
    #[error("not UTF-8 once decoded")]
    NotUtf8,
}

pub fn decode(s: &str, mode: Mode) -> Result<String, DecodeError> {
    if !s
        .bytes()
        .any(|b| b == b'%' || (b == b'+' && mode == Mode::Form))
    {
        return Ok(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| hex(*b));
                let lo = bytes.get(i + 2).and_then(|b| hex(*b));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(DecodeError::BadEscape);
                };
                let b = hi << 4 | lo;
                if b == b'/' && mode == Mode::Segments {
                    out.extend_from_slice(&bytes[i..i + 3]);
                } else {
                    out.push(b);
                }
                i += 3;
            }
            b'+' if mode == Mode::Form => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::NotUtf8)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_by_mode() {
        assert_eq!(decode("a%20b", Mode::Segment).as_deref(), Ok("a b"));
        assert_eq!(decode("a%2Fb", Mode::Segment).as_deref(), Ok("a/b"));
        assert_eq!(
            decode("a%2fb/c%41", Mode::Segments).as_deref(),
            Ok("a%2fb/cA")
        );
        assert_eq!(decode("a+b%2B", Mode::Form).as_deref(), Ok("a b+"));
        assert_eq!(decode("a+b", Mode::Segment).as_deref(), Ok("a+b"));
        assert_eq!(decode("caf%C3%A9", Mode::Form).as_deref(), Ok("café"));
        assert_eq!(decode("%zz", Mode::Segment), Err(DecodeError::BadEscape));
        assert_eq!(decode("%4", Mode::Segment), Err(DecodeError::BadEscape));
        assert_eq!(decode("%FF", Mode::Segment), Err(DecodeError::NotUtf8));
    }
}
