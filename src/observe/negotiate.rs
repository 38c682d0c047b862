//! Which text format a `/metrics` scrape gets: OpenMetrics 1.0 or the classic Prometheus text
//! format 0.0.4.
//!
//! Rules, in order:
//! 1. `?format=prometheus` or `?format=openmetrics` in the query decides (for tools that
//!    cannot set headers);
//! 2. else the `Accept` header (RFC 9110 §12.5.1): the media range with the highest `q` among
//!    `application/openmetrics-text` (OpenMetrics), `text/plain` (classic) and the wildcards
//!    (`*/*` and `application/*`: OpenMetrics, `text/*`: classic) wins; on a tie the first
//!    listed; `q=0` means "not this one". So `Accept: text/plain` (promtool, curl scripts,
//!    Prometheus 2.x set to the classic format) gets the classic format, and Prometheus's
//!    default header, which ranks OpenMetrics first, gets OpenMetrics;
//! 3. else (no header, or nothing in it we can give): OpenMetrics. An unknown Accept is
//!    answered, not refused with 406: a scrape is better than an error.

/// A `/metrics` text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsFormat {
    OpenMetrics,
    Prometheus,
}

/// Picks the format for a scrape with `query` and the `Accept` header value, if any.
pub fn negotiate(query: &str, accept: Option<&[u8]>) -> MetricsFormat {
    for pair in query.split('&') {
        match pair {
            "format=prometheus" => return MetricsFormat::Prometheus,
            "format=openmetrics" => return MetricsFormat::OpenMetrics,
            _ => {}
        }
    }
    let Some(accept) = accept.and_then(|a| std::str::from_utf8(a).ok()) else {
        return MetricsFormat::OpenMetrics;
    };
    let mut best: Option<(f32, MetricsFormat)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let format = match media.as_str() {
            "application/openmetrics-text" | "application/*" | "*/*" => MetricsFormat::OpenMetrics,
            "text/plain" | "text/*" => MetricsFormat::Prometheus,
            _ => continue,
        };
        let q =
            parts.find_map(|p| p.trim().strip_prefix("q=")).map_or(1.0, |q| q.trim().parse().unwrap_or(0.0));
        if q > 0.0 && best.is_none_or(|(top, _)| q > top) {
            best = Some((q, format));
        }
    }
    best.map_or(MetricsFormat::OpenMetrics, |(_, format)| format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use MetricsFormat::{OpenMetrics, Prometheus};

    #[test]
    fn the_query_wins_over_the_header() {
        assert_eq!(negotiate("format=prometheus", Some(b"application/openmetrics-text")), Prometheus);
        assert_eq!(negotiate("a=1&format=openmetrics", Some(b"text/plain")), OpenMetrics);
    }

    #[test]
    fn accept_picks_by_quality_then_order() {
        assert_eq!(negotiate("", None), OpenMetrics);
        assert_eq!(negotiate("", Some(b"text/plain")), Prometheus);
        assert_eq!(negotiate("", Some(b"text/plain; version=0.0.4; charset=utf-8")), Prometheus);
        assert_eq!(negotiate("", Some(b"*/*")), OpenMetrics);
        assert_eq!(negotiate("", Some(b"application/json")), OpenMetrics, "nothing we have: default");
        // Prometheus 2.x's default scrape header.
        let prometheus = b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate("", Some(prometheus)), OpenMetrics);
        // Prometheus with the classic format preferred.
        let classic = b"text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5";
        assert_eq!(negotiate("", Some(classic)), Prometheus);
        assert_eq!(negotiate("", Some(b"application/openmetrics-text;q=0, text/plain;q=0.1")), Prometheus);
        assert_eq!(
            negotiate("", Some(b"TEXT/PLAIN, application/openmetrics-text")),
            Prometheus,
            "tie: first"
        );
    }
}
