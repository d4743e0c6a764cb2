//! Byte-level mutations of valid inputs, shared by the property tests of
//! every crate and by the `weft-fuzz` driver. Random bytes alone rarely get
//! past a parser's first check; a valid message, file or request with a few
//! bytes changed reaches the checks deep inside it.
//!
//! An edit is three numbers (`op`, `at`, `byte`), so that any source of
//! randomness (proptest, a seeded generator) can drive it and a failure is
//! replayed from the numbers alone. Positions wrap around the input's length.

/// Byte sequences that often sit on a parser's edge: protobuf varints that
/// never end or overflow, line ends, YAML and PEM markers, huge or negative
/// numbers, a NUL, a byte-order mark, invalid UTF-8.
pub const INTERESTING: &[&[u8]] = &[
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0x80, 0x80, 0x80, 0x80],
    b"\r\n",
    b"\n---\n",
    b"-----",
    b"&a [*a, *a]",
    b"!!binary",
    b"99999999999999999999",
    b"-1",
    b"\x00",
    b"\xef\xbb\xbf",
    b"\xc3\x28",
    b"%",
    b"{",
    b"[[[[[[[[[[",
];

/// How many kinds of edit [`edit`] knows (`op` is taken modulo this).
pub const OPS: u8 = 8;

/// Applies one edit to `input`:
/// 0 flips a bit, 1 sets a byte, 2 inserts a byte, 3 removes a byte,
/// 4 duplicates a run (up to `byte` bytes) in place, 5 cuts the input at `at`,
/// 6 inserts one of [`INTERESTING`], 7 swaps two bytes.
pub fn edit(input: &mut Vec<u8>, op: u8, at: usize, byte: u8) {
    let len = input.len();
    let pos = if len == 0 { 0 } else { at % len };
    match op % OPS {
        0 if len > 0 => input[pos] ^= 1 << (byte % 8),
        1 if len > 0 => input[pos] = byte,
        2 => input.insert(at % (len + 1), byte),
        3 if len > 0 => {
            input.remove(pos);
        }
        4 if len > 0 => {
            let end = (pos + usize::from(byte) + 1).min(len);
            let run = input[pos..end].to_vec();
            let at = end.min(input.len());
            input.splice(at..at, run);
        }
        5 => input.truncate(pos),
        6 => {
            let seq = INTERESTING[usize::from(byte) % INTERESTING.len()];
            let at = at % (len + 1);
            input.splice(at..at, seq.iter().copied());
        }
        7 if len > 1 => input.swap(pos, usize::from(byte) % len),
        _ => {}
    }
}

/// `input` with every edit of `edits` applied in order.
pub fn mutate(input: &[u8], edits: &[(u8, usize, u8)]) -> Vec<u8> {
    let mut out = input.to_vec();
    for &(op, at, byte) in edits {
        edit(&mut out, op, at, byte);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_edit_stays_in_bounds() {
        for op in 0..OPS {
            for len in 0..4 {
                for at in [0, 1, 7, usize::MAX] {
                    for byte in [0, 1, 255] {
                        let mut v = vec![b'x'; len];
                        edit(&mut v, op, at, byte);
                    }
                }
            }
        }
        assert_eq!(mutate(b"abc", &[(5, 1, 0)]), b"a");
        assert_eq!(mutate(b"abc", &[(1, 4, b'z')]), b"azc");
    }
}
