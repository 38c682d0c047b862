//! Validation of a beacon's query string into an [`Event`](crate::wal::record::Event).
//! Pure functions, no IO; nothing invalid leaves this module.

/// `[a-z0-9_]{1,32}`.
pub fn is_valid_event_name(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
