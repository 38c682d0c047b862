//! Countries: an ISO 3166-1 alpha-2 code, as the GeoIP lookup gives it (`ingest::geoip`), the
//! WAL stores it (`wal::record`, key `cc`) and the sinks write it (`events.country`). A leaf
//! module, like `event_id`: none of those imports another for it.
//!
//! Invariant: a [`Country`] is exactly two ASCII upper-case letters. Text from a database file
//! or a WAL record becomes one only through [`Country::parse`] or [`Country::from_wal`], so
//! nothing unchecked is ever stored.

use std::fmt;

/// An ISO 3166-1 alpha-2 code: two ASCII upper-case letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// Two ASCII letters, upper-cased; anything else is `None`.
    pub fn parse(code: &str) -> Option<Country> {
        match code.as_bytes() {
            &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// The WAL form: exactly two ASCII upper-case letters (one spelling per country, so a
    /// record has one CRC per content). `None` otherwise.
    pub fn from_wal(code: &[u8]) -> Option<Country> {
        match *code {
            [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => Some(Country([a, b])),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        // Two ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    pub fn bytes(&self) -> [u8; 2] {
        self.0
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Country({})", self.as_str())
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_checked() {
        assert_eq!(Country::parse("us").map(|c| c.bytes()), Some(*b"US"));
        assert_eq!(Country::parse("GB").map(|c| c.to_string()).as_deref(), Some("GB"));
        for bad in ["", "U", "USA", "1A", "é", "U-"] {
            assert_eq!(Country::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_wal_form_is_upper_case_only() {
        assert_eq!(Country::from_wal(b"DE").map(|c| c.to_string()).as_deref(), Some("DE"));
        for bad in [&b"de"[..], b"D", b"DEU", b"D1", b""] {
            assert_eq!(Country::from_wal(bad), None, "{bad:?}");
        }
        assert_eq!(Country::parse("fr").map(|c| format!("{c:?}")).as_deref(), Some("Country(FR)"));
    }
}
