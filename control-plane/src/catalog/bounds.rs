//! What a sidecar may make the catalog keep, even with a valid certificate:
//! how many services it may want, and how much of the text it reports.

/// The most services one sidecar may want (declared and subscribed): the
/// protocol's bound, which the sidecar keeps too.
pub use weft_proto::name::MAX_WANTED;

/// Text a sidecar reports (a NACK reason, a health detail) is kept and
/// logged up to this many bytes.
pub const MAX_REPORTED_TEXT: usize = 1024;

/// A sidecar's version string is kept up to this many bytes.
pub const MAX_VERSION_TEXT: usize = 64;

/// `s` cut to at most `max` bytes on a character boundary, marked with `…`
/// when cut.
pub fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_text_is_clipped_on_a_character_boundary() {
        assert_eq!(clip("short".into(), 10), "short");
        assert_eq!(clip("abcdef".into(), 3), "abc…");
        // 'é' is two bytes: a cut inside it moves back to its start.
        assert_eq!(clip("aé".into(), 2), "a…");
        assert_eq!(
            clip("r".repeat(1 << 20), MAX_REPORTED_TEXT).len(),
            MAX_REPORTED_TEXT + 3
        );
    }
}
