//! JSON bodies: one object or an array of objects, read by simd-json's tape (production) or
//! serde_json (for comparison, `JsonParser::Serde`), then validated as beacons.
//!
//! Invariant: both parsers see every entry of an object, repeats included, and answer the same
//! for every body (the `body` fuzz target checks it): a key of a beacon that repeats, or an
//! object of more than [`JSON_MAX_KEYS`] keys, is refused rather than read one way or the other.

use super::{BatchScratch, BodyError, BodyRules, JsonParser};
use crate::ingest::{
    needs_decoding, validate_fields, Beacon, Fields, FileIdField, QueryScratch, Rejection, Rules,
};

/// One JSON field as the validator sees it, whichever parser produced it.
#[derive(Debug, Clone, Copy)]
enum Field<'v> {
    Missing,
    Str(&'v str),
    UInt(u64),
    Other,
}

struct JsonFields<'v> {
    event: Field<'v>,
    domain: Field<'v>,
    file_id: Field<'v>,
    event_id: Field<'v>,
    /// One of the four keys occurs twice in the object, or it has more than
    /// [`JSON_MAX_KEYS`] keys: refused (as a repeated query parameter is), since parsers
    /// differ on which of two entries counts.
    repeated: bool,
}

/// The keys a JSON beacon is read from.
const JSON_KEYS: [&str; 4] = ["event", "domain", "file_id", "event_id"];

/// Most keys one JSON object of a body may have (a beacon needs at most a dozen). Up to it
/// simd-json keeps an object's entries in order, each repeat included, so a repeated key is
/// seen; past it, its map may fold repeats together.
pub const JSON_MAX_KEYS: usize = 32;

/// Whether one of [`JSON_KEYS`] occurs more than once among `keys`.
fn repeats_a_key<'k, I: Iterator<Item = &'k str>>(keys: impl Fn() -> I) -> bool {
    JSON_KEYS.iter().any(|k| keys().filter(|name| name == k).nth(1).is_some())
}

pub(super) fn parse_json(
    body: &mut [u8],
    rules: &BodyRules<'_>,
    out: &mut BatchScratch,
) -> Result<(), BodyError> {
    match rules.parser {
        JsonParser::Simd => parse_json_simd(body, rules, out),
        JsonParser::Serde => parse_json_serde(body, rules, out),
    }
}

fn parse_json_simd(body: &mut [u8], rules: &BodyRules<'_>, out: &mut BatchScratch) -> Result<(), BodyError> {
    use simd_json::prelude::*;
    use simd_json::tape::{Object, Value};

    fn field<'i>(obj: &Object<'_, 'i>, key: &str) -> Field<'i> {
        match obj.get(key) {
            None => Field::Missing,
            Some(v) => match v.into_string() {
                Some(s) => Field::Str(s),
                None => v.as_u64().map_or(Field::Other, Field::UInt),
            },
        }
    }
    fn fields<'i>(item: Value<'_, 'i>) -> Option<JsonFields<'i>> {
        let obj = item.as_object()?;
        Some(JsonFields {
            event: field(&obj, "event"),
            domain: field(&obj, "domain"),
            file_id: field(&obj, "file_id"),
            event_id: field(&obj, "event_id"),
            // The tape keeps every entry of an object in order, repeats included.
            repeated: obj.len() > JSON_MAX_KEYS || repeats_a_key(|| obj.keys()),
        })
    }

    let mut buffers = out.json_buffers.take().unwrap_or_default();
    let result = match simd_json::to_tape_with_buffers(body, &mut buffers) {
        Err(_) => Err(BodyError::Malformed("invalid JSON")),
        Ok(tape) => {
            let doc = tape.as_value();
            match doc.as_array() {
                Some(items) => validate_items(items.len(), items.iter().map(fields), rules, out),
                None => validate_items(1, std::iter::once(fields(doc)), rules, out),
            }
        }
    };
    out.json_buffers = Some(buffers);
    result
}

fn parse_json_serde(body: &[u8], rules: &BodyRules<'_>, out: &mut BatchScratch) -> Result<(), BodyError> {
    use serde_json::Value;

    fn field<'v>(entries: &'v [(String, Value)], key: &str) -> Field<'v> {
        match entries.iter().find(|(k, _)| k == key).map(|(_, v)| v) {
            None => Field::Missing,
            Some(Value::String(s)) => Field::Str(s),
            Some(v) => v.as_u64().map_or(Field::Other, Field::UInt),
        }
    }
    fn fields(item: &serde_doc::Item) -> Option<JsonFields<'_>> {
        let serde_doc::Item::Object(entries) = item else { return None };
        Some(JsonFields {
            event: field(entries, "event"),
            domain: field(entries, "domain"),
            file_id: field(entries, "file_id"),
            event_id: field(entries, "event_id"),
            repeated: entries.len() > JSON_MAX_KEYS
                || repeats_a_key(|| entries.iter().map(|(k, _)| k.as_str())),
        })
    }

    match serde_json::from_slice::<serde_doc::Doc>(body) {
        Err(_) => Err(BodyError::Malformed("invalid JSON")),
        Ok(serde_doc::Doc::Items(items)) => validate_items(items.len(), items.iter().map(fields), rules, out),
        Ok(serde_doc::Doc::One(single)) => validate_items(1, std::iter::once(fields(&single)), rules, out),
    }
}

/// A JSON body as serde_json reads it for [`parse_json_serde`], keeping every entry of an
/// object: a `serde_json::Map` keeps only the last of a repeated key, so the check that keys
/// do not repeat could not see it.
mod serde_doc {
    use std::fmt;

    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::Value;

    pub enum Doc {
        Items(Vec<Item>),
        One(Item),
    }

    pub enum Item {
        Object(Vec<(String, Value)>),
        /// Anything but an object.
        Other,
    }

    fn entries<'de, A: MapAccess<'de>>(mut map: A) -> Result<Vec<(String, Value)>, A::Error> {
        let mut all = Vec::new();
        while let Some(entry) = map.next_entry::<String, Value>()? {
            all.push(entry);
        }
        Ok(all)
    }

    /// Visits any JSON value; `F` makes the result of an object, an array and the rest.
    struct Any<F>(F);

    macro_rules! other {
        ($($name:ident: $t:ty),*) => {$(
            fn $name<E>(self, _: $t) -> Result<Self::Value, E> { Ok((self.0)(Shape::Other)) }
        )*};
    }

    enum Shape {
        Object(Vec<(String, Value)>),
        Array(Vec<Item>),
        Other,
    }

    impl<'de, T, F: FnOnce(Shape) -> T> Visitor<'de> for Any<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            Ok((self.0)(Shape::Object(entries(map)?)))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<Item>()? {
                items.push(item);
            }
            Ok((self.0)(Shape::Array(items)))
        }
        fn visit_unit<E>(self) -> Result<T, E> {
            Ok((self.0)(Shape::Other))
        }
        other!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);
    }

    impl<'de> Deserialize<'de> for Item {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Item, D::Error> {
            d.deserialize_any(Any(|shape| match shape {
                Shape::Object(entries) => Item::Object(entries),
                Shape::Array(_) | Shape::Other => Item::Other,
            }))
        }
    }

    impl<'de> Deserialize<'de> for Doc {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
            d.deserialize_any(Any(|shape| match shape {
                Shape::Object(entries) => Doc::One(Item::Object(entries)),
                Shape::Array(items) => Doc::Items(items),
                Shape::Other => Doc::One(Item::Other),
            }))
        }
    }
}

/// Validates every item (`None`: not a JSON object) into `out`, stopping at the first bad one.
fn validate_items<'v>(
    count: usize,
    items: impl Iterator<Item = Option<JsonFields<'v>>>,
    rules: &BodyRules<'_>,
    out: &mut BatchScratch,
) -> Result<(), BodyError> {
    if count == 0 {
        return Err(BodyError::Empty);
    }
    if count > rules.max_events {
        return Err(BodyError::TooManyEvents { max: rules.max_events });
    }
    let mut query = std::mem::take(&mut out.query);
    let mut result = Ok(());
    for (index, item) in items.enumerate() {
        let Some(f) = item else {
            result = Err(BodyError::Malformed("items must be JSON objects"));
            break;
        };
        if f.repeated {
            result = Err(BodyError::Malformed("a key repeats in a JSON object, or it has over 32 keys"));
            break;
        }
        match validate_json_item(&f, rules.rules, &mut query) {
            Ok(beacon) => out.push(&beacon),
            Err(rejection) => {
                result = Err(BodyError::Item { index, rejection });
                break;
            }
        }
    }
    out.query = query;
    result
}

fn validate_json_item<'s>(
    f: &JsonFields<'s>,
    rules: &Rules,
    scratch: &'s mut QueryScratch,
) -> Result<Beacon<'s>, Rejection> {
    let file_id = match f.file_id {
        Field::Missing => None,
        Field::UInt(n) => Some(FileIdField::Number(n)),
        // `%` and `+` mean something in form encoding; in a JSON value they are just invalid.
        Field::Str(s) if !needs_decoding(s) => Some(FileIdField::Text(s)),
        _ => return Err(Rejection::BadFileId),
    };
    let fields = Fields {
        event: text(f.event, Rejection::BadEvent)?,
        domain: text(f.domain, Rejection::BadDomain)?,
        file_id,
        event_id: text(f.event_id, Rejection::BadEventId)?,
    };
    validate_fields(&fields, 0, rules, scratch)
}

/// A JSON string field as a value to validate; anything but a plain string is `bad`, and so
/// is a string with `%` or `+`: they mean something in form encoding, in JSON nothing.
fn text<'v>(field: Field<'v>, bad: Rejection) -> Result<Option<&'v str>, Rejection> {
    match field {
        Field::Missing => Ok(None),
        Field::Str(s) if !needs_decoding(s) => Ok(Some(s)),
        _ => Err(bad),
    }
}
