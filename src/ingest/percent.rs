//! Form-encoding (`application/x-www-form-urlencoded`, and so query strings): `%XX` is a byte,
//! `+` a space. Decoding is an iterator over bytes, so callers decode into fixed stack buffers
//! and never allocate; a bad escape is [`Rejection::BadPercentEncoding`].

use super::Rejection;

/// Whether `raw` differs from its decoding; most beacons need no decoding at all.
pub(crate) fn needs_decoding(raw: &str) -> bool {
    raw.bytes().any(|b| b == b'%' || b == b'+')
}

/// Form-encoding decoder: `%XX` is a byte, `+` a space, anything else itself.
pub(crate) struct PercentDecode<'a> {
    rest: &'a [u8],
}

impl<'a> PercentDecode<'a> {
    pub(crate) fn new(raw: &'a str) -> Self {
        PercentDecode { rest: raw.as_bytes() }
    }
}

impl Iterator for PercentDecode<'_> {
    type Item = Result<u8, Rejection>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(match first {
            b'+' => Ok(b' '),
            b'%' => self.escape(),
            other => Ok(other),
        })
    }
}

impl PercentDecode<'_> {
    /// The two hex digits after a `%`.
    fn escape(&mut self) -> Result<u8, Rejection> {
        let Some((&[hi, lo], rest)) = self.rest.split_first_chunk::<2>() else {
            self.rest = &[];
            return Err(Rejection::BadPercentEncoding);
        };
        self.rest = rest;
        match (hex_value(hi), hex_value(lo)) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err(Rejection::BadPercentEncoding),
        }
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}
