//! Client event ids: a UUID the client picks for each event, so that its retry of a lost
//! answer is one row, not two. A leaf module: `ingest` parses ids, `wal::record` stores them,
//! the sinks write them; none of them imports another for it.
//!
//! Rules:
//! - the text form is a UUID, `8-4-4-4-12` hex digits with hyphens or the 32 digits alone,
//!   either case (RFC 9562 §4); no braces, no `urn:uuid:` prefix;
//! - any version is accepted (v4 and v7 are what SDKs send), but the nil UUID is not: every
//!   client that failed to generate an id would send it, and their events would collapse;
//! - in the WAL an id is 32 lower-case hex digits ([`EventId::write_hex`],
//!   [`EventId::from_hex`]): one spelling per id, so a record has one CRC per content.

use std::fmt;

/// A client event id, the 16 bytes of a UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId([u8; 16]);

/// Why a text is not an event id (a 400 for the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventIdError {
    /// Not a UUID in text form.
    Syntax,
    /// The nil UUID `00000000-0000-0000-0000-000000000000`.
    Nil,
}

/// Positions of the hyphens in the 36-character form.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

impl EventId {
    /// Parses the text form of a UUID (see the module doc).
    pub fn parse(text: &[u8]) -> Result<EventId, EventIdError> {
        let mut digits = [0u8; 32];
        match text.len() {
            32 => digits.copy_from_slice(text),
            36 => {
                let mut n = 0;
                for (i, &b) in text.iter().enumerate() {
                    if HYPHENS.contains(&i) {
                        if b != b'-' {
                            return Err(EventIdError::Syntax);
                        }
                    } else {
                        digits[n] = b;
                        n += 1;
                    }
                }
            }
            _ => return Err(EventIdError::Syntax),
        }
        let id = Self::from_digits(&digits, true).ok_or(EventIdError::Syntax)?;
        if id.0 == [0; 16] {
            return Err(EventIdError::Nil);
        }
        Ok(id)
    }

    /// Reads the WAL form: exactly 32 lower-case hex digits. `None` otherwise.
    pub fn from_hex(text: &[u8]) -> Option<EventId> {
        let digits: &[u8; 32] = text.try_into().ok()?;
        Self::from_digits(digits, false)
    }

    fn from_digits(digits: &[u8; 32], any_case: bool) -> Option<EventId> {
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = hex_value(pair[0], any_case)? << 4 | hex_value(pair[1], any_case)?;
        }
        Some(EventId(bytes))
    }

    /// Appends the WAL form (32 lower-case hex digits).
    pub fn write_hex(&self, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for b in self.0 {
            out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }

    /// The 16 bytes, as `events.event_id` stores them.
    pub fn bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn from_bytes(bytes: [u8; 16]) -> EventId {
        EventId(bytes)
    }
}

impl fmt::Display for EventId {
    /// The canonical hyphenated lower-case form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

fn hex_value(digit: u8, any_case: bool) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' if any_case => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "3f2b8c1e-9d4a-4c6b-8e21-7a5f0d9c1b2e";

    #[test]
    fn hyphenated_and_simple_forms_in_any_case() {
        let id = EventId::parse(V4.as_bytes()).unwrap();
        assert_eq!(id.to_string(), V4);
        assert_eq!(EventId::parse(V4.to_uppercase().as_bytes()), Ok(id));
        assert_eq!(EventId::parse(V4.replace('-', "").as_bytes()), Ok(id));
        assert_eq!(id.bytes()[0], 0x3f);
        let v7 = "01890a5d-ac96-774b-bcce-b302099a8057";
        assert_eq!(EventId::parse(v7.as_bytes()).unwrap().to_string(), v7);
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "3f2b8c1e9d4a4c6b8e217a5f0d9c1b2",
            "3f2b8c1e-9d4a-4c6b-8e21-7a5f0d9c1b2",
            "3f2b8c1e-9d4a-4c6b-8e21-7a5f0d9c1b2e0",
            "{3f2b8c1e-9d4a-4c6b-8e21-7a5f0d9c1b2e}",
            "urn:uuid:3f2b8c1e-9d4a-4c6b-8e21-7a5f0d9c1b2e",
            "3f2b8c1e-9d4a-4c6b-8e21_7a5f0d9c1b2e",
            "3f2b8c1e9-d4a-4c6b-8e21-7a5f0d9c1b2e",
            "gf2b8c1e-9d4a-4c6b-8e21-7a5f0d9c1b2e",
            "3f2b8c1e-9d4a-4c6b-8e21-7a5f0d9c1b2é",
        ] {
            assert_eq!(EventId::parse(bad.as_bytes()), Err(EventIdError::Syntax), "{bad}");
        }
        assert_eq!(EventId::parse(b"00000000-0000-0000-0000-000000000000"), Err(EventIdError::Nil));
        assert_eq!(EventId::parse(&[b'0'; 32]), Err(EventIdError::Nil));
    }

    #[test]
    fn wal_form_round_trips_and_is_strict() {
        let id = EventId::parse(V4.as_bytes()).unwrap();
        let mut hex = Vec::new();
        id.write_hex(&mut hex);
        assert_eq!(hex, V4.replace('-', "").as_bytes());
        assert_eq!(EventId::from_hex(&hex), Some(id));
        assert_eq!(EventId::from_hex(V4.to_uppercase().replace('-', "").as_bytes()), None);
        assert_eq!(EventId::from_hex(V4.as_bytes()), None);
        assert_eq!(EventId::from_bytes(*id.bytes()), id);
    }

    proptest::proptest! {
        #[test]
        fn every_id_round_trips(bytes in proptest::array::uniform16(proptest::num::u8::ANY)) {
            let id = EventId::from_bytes(bytes);
            let text = id.to_string();
            proptest::prop_assert_eq!(text.len(), 36);
            if bytes != [0; 16] {
                proptest::prop_assert_eq!(EventId::parse(text.as_bytes()), Ok(id));
            }
            let mut hex = Vec::new();
            id.write_hex(&mut hex);
            proptest::prop_assert_eq!(EventId::from_hex(&hex), Some(id));
        }
    }
}
