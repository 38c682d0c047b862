//! Extra query parameters kept with an event (`ingest.keep_params`), as one JSON object.
//!
//! Rules:
//! - only parameters named in `ingest.keep_params` are kept; by default none, and then this
//!   module is never called;
//! - names and values are form-decoded (`%XX`, `+`); a parameter that does not decode to
//!   UTF-8 is dropped (it cannot reject the beacon: extras are best effort);
//! - the first occurrence of a name wins;
//! - the object is at most [`EXTRA_MAX_BYTES`]: a parameter that would pass the bound is
//!   dropped, the ones before it stay.

use crate::wal::record::json_string;

use super::query::{Pair, Pairs};
use super::PercentDecode;

/// Largest `extra` object, bytes of JSON text.
pub const EXTRA_MAX_BYTES: usize = 1024;

/// The parameter names to keep, from `ingest.keep_params`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepParams {
    names: Vec<String>,
}

impl KeepParams {
    pub fn new(names: &[String]) -> KeepParams {
        KeepParams { names: names.to_vec() }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Writes the kept parameters of `query` as a JSON object into `out` (cleared first);
    /// returns false (with `out` empty) when none is present.
    pub fn extract(&self, query: &str, out: &mut String) -> bool {
        out.clear();
        let mut name_buf = String::new();
        let mut value_buf = String::new();
        for Pair { name, value, .. } in Pairs::new(query) {
            if !decode_into(name, &mut name_buf) || !self.names.contains(&name_buf) {
                continue;
            }
            if !decode_into(value, &mut value_buf) || contains_key(out, &name_buf) {
                continue;
            }
            append_member(out, &name_buf, &value_buf);
        }
        if !out.is_empty() {
            out.push('}');
        }
        !out.is_empty()
    }
}

fn decode_into(raw: &str, out: &mut String) -> bool {
    let bytes: Result<Vec<u8>, _> = PercentDecode::new(raw).collect();
    match bytes.map(String::from_utf8) {
        Ok(Ok(text)) => {
            *out = text;
            true
        }
        _ => false,
    }
}

fn contains_key(object: &str, name: &str) -> bool {
    let mut key = String::with_capacity(name.len() + 3);
    push_json_string(name, &mut key);
    key.push(':');
    object.contains(&key)
}

/// Appends `"name":"value"` (opening the object first) unless the object would pass the
/// bound, counting its closing brace.
fn append_member(object: &mut String, name: &str, value: &str) {
    let mut member = String::with_capacity(name.len() + value.len() + 6);
    member.push(if object.is_empty() { '{' } else { ',' });
    push_json_string(name, &mut member);
    member.push(':');
    push_json_string(value, &mut member);
    if object.len() + member.len() < EXTRA_MAX_BYTES {
        object.push_str(&member);
    }
}

/// Appends `s` as a JSON string literal, escaped as the WAL escapes it.
fn push_json_string(s: &str, out: &mut String) {
    json_string(s, |piece| out.push_str(piece));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(names: &[&str]) -> KeepParams {
        KeepParams::new(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn extract(k: &KeepParams, query: &str) -> Option<serde_json::Value> {
        let mut out = String::from("stale");
        k.extract(query, &mut out).then(|| serde_json::from_str(&out).expect("valid JSON"))
    }

    #[test]
    fn keeps_only_listed_params_decoded() {
        let k = keep(&["quality", "position"]);
        let v = extract(&k, "event=play&quality=720p&x=1&position=12.5&domain=a.b&file_id=1");
        assert_eq!(v, Some(serde_json::json!({"quality": "720p", "position": "12.5"})));
        let v = extract(&k, "quality=HD+%22x%22%5C&qu%61lity=second");
        assert_eq!(v, Some(serde_json::json!({"quality": "HD \"x\"\\"})), "first wins");
        assert_eq!(extract(&k, "event=play&domain=a.b"), None);
        assert_eq!(extract(&k, "quality=%ff"), None, "non-UTF-8 is dropped");
        assert_eq!(extract(&k, "quality=%zz&position=1"), Some(serde_json::json!({"position": "1"})));
        assert_eq!(extract(&k, "quality=%0a"), Some(serde_json::json!({"quality": "\n"})));
    }

    #[test]
    fn bounded_to_one_kib() {
        let k = keep(&["a", "b", "c"]);
        let big = "x".repeat(600);
        let mut out = String::new();
        assert!(k.extract(&format!("a={big}&b={big}&c=small"), &mut out));
        assert!(out.len() <= EXTRA_MAX_BYTES, "{}", out.len());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, serde_json::json!({"a": big, "c": "small"}));
        assert!(!k.extract(&format!("a={}", "y".repeat(2000)), &mut out));
        assert!(out.is_empty());
    }
}
