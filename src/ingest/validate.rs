//! The validators of a beacon's values (the rules are in the module doc of `crate::ingest`),
//! each taking a value as it arrived in the query, still percent-encoded.
//!
//! Each reads the value in place first (the fast path): a valid event name, hostname, number
//! or event id holds no `%` and no `+`, so a value that passes as it arrived is its own
//! decoding, and nothing is decoded or copied. Anything else takes the general path,
//! `decode_*`, which decodes into the caller's buffer, then checks, and so decides the rejection
//! (or accepts an escaped or upper-case spelling).
//!
//! Invariant: for every input both paths give the same result; the tests check it on random
//! values.

use super::{
    is_valid_event_name, needs_decoding, EventAllowlist, Param, PercentDecode, Rejection, DOMAIN_MAX_BYTES,
    EVENT_MAX_BYTES, LABEL_MAX_BYTES,
};
use crate::event_id::EventId;

/// An `eid` value: a UUID in text form.
pub(super) fn validate_event_id(raw: &str) -> Result<EventId, Rejection> {
    EventId::parse(raw.as_bytes()).or_else(|_| decode_event_id(raw))
}

/// The general path of [`validate_event_id`]: percent-decoded (a UUID needs no escapes, but a
/// client may still send them), then parsed.
fn decode_event_id(raw: &str) -> Result<EventId, Rejection> {
    if raw.is_empty() {
        return Err(Rejection::Empty(Param::EventId));
    }
    const LONGEST: usize = 36; // the hyphenated form
    let mut decoded = [0u8; LONGEST];
    let mut len = 0;
    for byte in PercentDecode::new(raw) {
        *decoded.get_mut(len).ok_or(Rejection::BadEventId)? = byte?;
        len += 1;
    }
    EventId::parse(&decoded[..len]).map_err(|_| Rejection::BadEventId)
}

/// The event name, if it is also in `allow`.
pub(super) fn validate_event<'s>(
    raw: &'s str,
    allow: &EventAllowlist,
    buf: &'s mut String,
) -> Result<&'s str, Rejection> {
    let event = if is_valid_event_name(raw) { raw } else { decode_event(raw, buf)? };
    if !allow.allows(event) {
        return Err(Rejection::EventNotAllowed);
    }
    Ok(event)
}

/// The general path of [`validate_event`]: the name decoded into `buf`, then checked.
fn decode_event<'s>(raw: &str, buf: &'s mut String) -> Result<&'s str, Rejection> {
    if raw.is_empty() {
        return Err(Rejection::Empty(Param::Event));
    }
    decode_value(raw, EVENT_MAX_BYTES, Rejection::BadEvent, buf)?;
    if !is_valid_event_name(buf) {
        return Err(Rejection::BadEvent);
    }
    Ok(buf)
}

/// The lower-cased domain: `raw` itself when it is already a lower-case hostname, else its
/// decoding in `buf`.
pub(super) fn validate_domain<'s>(raw: &'s str, buf: &'s mut String) -> Result<&'s str, Rejection> {
    if is_valid_hostname(raw.as_bytes()) {
        return Ok(raw);
    }
    decode_domain(raw, buf)
}

/// The general path of [`validate_domain`]: decoded into `buf`, lower-cased, then checked.
fn decode_domain<'s>(raw: &str, buf: &'s mut String) -> Result<&'s str, Rejection> {
    if raw.is_empty() {
        return Err(Rejection::Empty(Param::Domain));
    }
    decode_value(raw, DOMAIN_MAX_BYTES, Rejection::BadDomain, buf)?;
    buf.make_ascii_lowercase();
    if !buf.is_ascii() {
        return Err(Rejection::NonAsciiDomain);
    }
    if !is_valid_hostname(buf.as_bytes()) {
        return Err(Rejection::BadDomain);
    }
    Ok(buf)
}

/// The lower-case hostname rules of the module doc, in one pass over `name`.
fn is_valid_hostname(name: &[u8]) -> bool {
    if name.len() > DOMAIN_MAX_BYTES {
        return false;
    }
    let mut label_start = 0;
    for (at, &b) in name.iter().enumerate() {
        if LABEL_BYTES[usize::from(b)] {
            continue;
        }
        if b != b'.' || !is_valid_label(name.get(label_start..at).unwrap_or_default()) {
            return false;
        }
        label_start = at + 1;
    }
    is_valid_label(name.get(label_start..).unwrap_or_default())
}

/// `LABEL_BYTES[b]`: whether `b` may be in a label, `[a-z0-9-]` (a table: one load per byte).
const LABEL_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = matches!(b as u8, b'a'..=b'z' | b'0'..=b'9' | b'-');
        b += 1;
    }
    table
};

/// The length and hyphen rules of a label whose bytes are already known to be `[a-z0-9-]`.
fn is_valid_label(label: &[u8]) -> bool {
    (1..=LABEL_MAX_BYTES).contains(&label.len())
        && label.first() != Some(&b'-')
        && label.last() != Some(&b'-')
}

/// The `file_id` as a number. 1 to 19 plain digits (every such number fits `u64`: the
/// usual id) are read in place, in one pass without overflow checks; anything else takes the
/// general path.
pub(super) fn validate_file_id(raw: &str) -> Result<u64, Rejection> {
    let digits = raw.as_bytes();
    if !(1..=PLAIN_FILE_ID_DIGITS).contains(&digits.len()) {
        return decode_file_id(raw);
    }
    let mut id: u64 = 0;
    for &d in digits {
        let digit = d.wrapping_sub(b'0');
        if digit > 9 {
            return decode_file_id(raw);
        }
        id = id * 10 + u64::from(digit);
    }
    nonzero(id)
}

/// 19 digits: at most 9,999,999,999,999,999,999, below `u64::MAX` (20 digits).
const PLAIN_FILE_ID_DIGITS: usize = 19;

/// The general path of [`validate_file_id`]: the digits decoded as they are read.
fn decode_file_id(raw: &str) -> Result<u64, Rejection> {
    if raw.is_empty() {
        return Err(Rejection::Empty(Param::FileId));
    }
    decimal(PercentDecode::new(raw))
}

/// The number that decoded `digits` spell: `BadFileId` at the first non-digit, past `u64`, or
/// for 0; a bad escape before either is `BadPercentEncoding`.
fn decimal(digits: impl Iterator<Item = Result<u8, Rejection>>) -> Result<u64, Rejection> {
    let mut id: u64 = 0;
    for byte in digits {
        let byte = byte?;
        if !byte.is_ascii_digit() {
            return Err(Rejection::BadFileId);
        }
        id = id
            .checked_mul(10)
            .and_then(|id| id.checked_add(u64::from(byte - b'0')))
            .ok_or(Rejection::BadFileId)?;
    }
    nonzero(id)
}

/// A file id of 0 is `BadFileId`.
fn nonzero(id: u64) -> Result<u64, Rejection> {
    if id == 0 {
        return Err(Rejection::BadFileId);
    }
    Ok(id)
}

/// Longest value ever decoded, bytes: the longest of the limits below.
const DECODE_MAX_BYTES: usize = DOMAIN_MAX_BYTES;
const _: () = assert!(EVENT_MAX_BYTES <= DECODE_MAX_BYTES);

/// Replaces `buf` with the decoded `raw`; `too_long` past `max_bytes`, `BadUtf8` if the
/// decoded bytes are not UTF-8. Values without escapes are copied as they are.
fn decode_value(raw: &str, max_bytes: usize, too_long: Rejection, buf: &mut String) -> Result<(), Rejection> {
    debug_assert!(max_bytes <= DECODE_MAX_BYTES);
    buf.clear();
    if !needs_decoding(raw) {
        if raw.len() > max_bytes {
            return Err(too_long);
        }
        buf.push_str(raw);
        return Ok(());
    }
    let mut decoded = [0u8; DECODE_MAX_BYTES];
    let mut len = 0;
    for byte in PercentDecode::new(raw) {
        let byte = byte?;
        match decoded.get_mut(len) {
            Some(slot) if len < max_bytes => *slot = byte,
            _ => return Err(too_long),
        }
        len += 1;
    }
    let text = std::str::from_utf8(&decoded[..len]).map_err(|_| Rejection::BadUtf8)?;
    buf.push_str(text);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of every kind: valid and nearly valid events, hostnames, numbers and UUIDs, in
    /// any case, with escapes good and bad, `+`, and non-ASCII text.
    const VALUES: &str = "([a-zA-Z0-9_.-]|[0-9a-f]{8}-|%[0-9a-fA-F]{2}|%2[eE]|%[^0-9a-fA-F]|\\+|\\PC){0,40}";

    proptest::proptest! {
        #[test]
        fn fast_and_general_paths_agree(raw in VALUES) {
            let (mut fast, mut general) = (String::new(), String::new());
            let allow = EventAllowlist::default();
            let event = validate_event(&raw, &allow, &mut fast).map(str::to_owned);
            proptest::prop_assert_eq!(event, decode_event(&raw, &mut general).map(str::to_owned));
            let domain = validate_domain(&raw, &mut fast).map(str::to_owned);
            proptest::prop_assert_eq!(domain, decode_domain(&raw, &mut general).map(str::to_owned));
            proptest::prop_assert_eq!(validate_file_id(&raw), decode_file_id(&raw));
            proptest::prop_assert_eq!(validate_event_id(&raw), decode_event_id(&raw));
        }

        #[test]
        fn fast_and_general_paths_agree_on_near_valid_values(
            label in "[a-zA-Z0-9-]{0,64}",
            digits in "[0-9]{0,21}",
            uuid in "[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}",
            dots in 0usize..5,
        ) {
            let (mut fast, mut general) = (String::new(), String::new());
            let domain = vec![label.as_str(); dots + 1].join(".");
            let got = validate_domain(&domain, &mut fast).map(str::to_owned);
            proptest::prop_assert_eq!(got, decode_domain(&domain, &mut general).map(str::to_owned));
            proptest::prop_assert_eq!(validate_file_id(&digits), decode_file_id(&digits));
            proptest::prop_assert_eq!(validate_event_id(&uuid), decode_event_id(&uuid));
        }
    }
}
