//! The one error a stage's configuration check returns: which key is wrong and why.
//!
//! A leaf module: every stage's config (`http::config`, `wal::config`, …) checks its own keys
//! and returns this, and `crate::config` wraps it, so no stage depends on the assembler.

/// A configuration key whose value is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidKey {
    /// Dotted key, e.g. `wal.segment_bytes`.
    pub key: &'static str,
    pub message: String,
}

impl InvalidKey {
    /// `Err` naming `key`, for `return InvalidKey::err(…)` in a stage's `validate`.
    pub fn err<T>(key: &'static str, message: impl Into<String>) -> Result<T, InvalidKey> {
        Err(InvalidKey { key, message: message.into() })
    }
}
