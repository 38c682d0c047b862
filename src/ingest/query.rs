//! Splitting a query string into `name=value` pairs, and finding the still-encoded values of
//! the parameters a beacon uses (the splitting rules are in the module doc of `crate::ingest`).
//!
//! Cheap on purpose, since every beacon goes through it: a pair that starts with one of our
//! names and its `=` (nearly every pair of a real beacon) is told apart by one compare, and
//! only its value is scanned, for the `&` that ends it. Values are not looked at for escapes
//! here: the validators read a value in place first and decode it only when that fails.

use super::{needs_decoding, Param, PercentDecode, Rejection};

/// One `name=value` pair of a query, still encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pair<'q> {
    pub(crate) name: &'q str,
    /// Empty for a pair without `=`.
    pub(crate) value: &'q str,
    /// Our parameter, when the name is one as it is (not escaped) and the pair has its `=`.
    pub(crate) param: Option<Param>,
}

/// The pairs of a query in order; empty pairs (`a=1&&b=2`) are skipped.
pub(crate) struct Pairs<'q> {
    /// The query after the pairs already returned; `None` once past the end.
    rest: Option<&'q str>,
}

impl<'q> Pairs<'q> {
    pub(crate) fn new(query: &'q str) -> Self {
        Pairs { rest: Some(query) }
    }
}

impl<'q> Iterator for Pairs<'q> {
    type Item = Pair<'q>;

    // Inlined into `find_params`: out of line, a beacon's pairs cost ~130 more instructions
    // (callgrind), the pair going through memory.
    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let query = self.rest?;
            let bytes = query.as_bytes();
            let param = known_name(bytes);
            let name_end = param.map_or_else(|| find(bytes, 0, b'='), |p| p.name().len());
            let end = match bytes.get(name_end) {
                Some(b'=') => find(bytes, name_end + 1, b'&'),
                _ => name_end,
            };
            // Each index is that of an ASCII byte or the end, so a char boundary: `get` never
            // fails on it, and the fallback is never taken.
            self.rest = query.get(end + 1..);
            if end > 0 {
                let name = query.get(..name_end).unwrap_or("");
                return Some(Pair { name, value: query.get(name_end + 1..end).unwrap_or(""), param });
            }
        }
    }
}

/// Which of our parameters `bytes` starts with, followed by its `=`: the usual case, told
/// apart without a scan.
fn known_name(bytes: &[u8]) -> Option<Param> {
    Param::ALL.into_iter().find(|p| {
        let name = p.name().as_bytes();
        bytes.get(name.len()) == Some(&b'=') && bytes.starts_with(name)
    })
}

/// The index of the first `stop` or `&` at or after `from`, or the end.
fn find(bytes: &[u8], from: usize, stop: u8) -> usize {
    let tail = bytes.get(from..).unwrap_or_default();
    from + tail.iter().position(|&b| b == stop || b == b'&').unwrap_or(tail.len())
}

/// Still-encoded values of the parameters a beacon uses, each seen at most once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawParams<'q> {
    pub(crate) event: Option<&'q str>,
    pub(crate) domain: Option<&'q str>,
    pub(crate) file_id: Option<&'q str>,
    pub(crate) event_id: Option<&'q str>,
}

/// The values of our parameters in `query`; the first bad escape in a name or the first
/// repeated parameter, in query order, rejects it.
pub(crate) fn find_params(query: &str) -> Result<RawParams<'_>, Rejection> {
    let mut raw = RawParams::default();
    for pair in Pairs::new(query) {
        let Some(param) = pair.param.map_or_else(|| known_param(pair.name), |p| Ok(Some(p)))? else {
            continue;
        };
        let slot = match param {
            Param::Event => &mut raw.event,
            Param::Domain => &mut raw.domain,
            Param::FileId => &mut raw.file_id,
            Param::EventId => &mut raw.event_id,
        };
        if slot.replace(pair.value).is_some() {
            return Err(Rejection::Duplicate(param));
        }
    }
    Ok(raw)
}

/// Which of our parameters the encoded `name` decodes to, if any.
fn known_param(name: &str) -> Result<Option<Param>, Rejection> {
    if !needs_decoding(name) {
        return Ok(param_named(name.as_bytes()));
    }
    const LONGEST: usize = 7; // "file_id"
    let mut decoded = [0u8; LONGEST];
    let mut len = 0;
    for byte in PercentDecode::new(name) {
        let byte = byte?;
        if let Some(slot) = decoded.get_mut(len) {
            *slot = byte;
        }
        len += 1;
    }
    Ok(decoded.get(..len).and_then(param_named))
}

fn param_named(decoded: &[u8]) -> Option<Param> {
    Param::ALL.into_iter().find(|p| p.name().as_bytes() == decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The splitting rules of the module doc of `crate::ingest`, restated with `str` methods.
    fn reference_pairs(query: &str) -> Vec<(&str, &str)> {
        let pairs = query.split('&').filter(|pair| !pair.is_empty());
        pairs.map(|pair| pair.split_once('=').unwrap_or((pair, ""))).collect()
    }

    #[test]
    fn pairs_split_on_amp_then_on_the_first_eq() {
        let got: Vec<_> =
            Pairs::new("&a=1=2&&b&=c&event=&domain=x&file_id&").map(|p| (p.name, p.value)).collect();
        let want = [("a", "1=2"), ("b", ""), ("", "c"), ("event", ""), ("domain", "x"), ("file_id", "")];
        assert_eq!(got, want);
    }

    #[test]
    fn known_names_are_recognised_only_as_they_are_and_with_their_eq() {
        let params: Vec<_> = Pairs::new("event=1&domain=2&file_id=3&eid=4&event&ev%65nt=5&events=6")
            .map(|p| p.param)
            .collect();
        let (e, d, f, i) = (Param::Event, Param::Domain, Param::FileId, Param::EventId);
        assert_eq!(params, [Some(e), Some(d), Some(f), Some(i), None, None, None]);
        assert_eq!(find_params("ev%65nt=5").map(|raw| raw.event), Ok(Some("5")), "escaped: the general path");
    }

    proptest::proptest! {
        #[test]
        fn pairs_match_the_reference_split(
            query in "(event=|domain=|file_id=|eid=|event|ev%65nt=|[a-z_=&%+]|%[0-9a-fA-F]{2}|\\PC){0,40}"
        ) {
            let pairs: Vec<Pair<'_>> = Pairs::new(&query).collect();
            let split: Vec<_> = pairs.iter().map(|p| (p.name, p.value)).collect();
            proptest::prop_assert_eq!(split, reference_pairs(&query));
            // The names told apart by one compare are the ones the general path decodes to.
            for pair in pairs.into_iter().filter(|p| p.param.is_some()) {
                proptest::prop_assert_eq!(known_param(pair.name), Ok(pair.param));
            }
        }
    }
}
