//! Why a beacon is rejected: the parameter names and the [`Rejection`] reasons, each with
//! its one-line message, metric label and status. Allocation-free, `Copy`: the hot path
//! returns them by value.

/// The parameters a beacon must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    Event,
    Domain,
    FileId,
    EventId,
}

impl Param {
    pub const ALL: [Param; 4] = [Param::Event, Param::Domain, Param::FileId, Param::EventId];

    pub fn name(self) -> &'static str {
        match self {
            Param::Event => "event",
            Param::Domain => "domain",
            Param::FileId => "file_id",
            Param::EventId => "eid",
        }
    }
}

/// Why a beacon is rejected (always a 400). Allocation-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Missing(Param),
    Duplicate(Param),
    Empty(Param),
    BadEvent,
    EventNotAllowed,
    BadDomain,
    NonAsciiDomain,
    BadFileId,
    BadPercentEncoding,
    BadUtf8,
    BadEventId,
}

impl Rejection {
    /// One line, no newline, for the response body.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Missing(Param::Event) => "missing parameter: event",
            Rejection::Missing(Param::Domain) => "missing parameter: domain",
            Rejection::Missing(Param::FileId) => "missing parameter: file_id",
            Rejection::Missing(Param::EventId) => "missing parameter: eid (ingest.require_event_id)",
            Rejection::Duplicate(Param::Event) => "duplicated parameter: event",
            Rejection::Duplicate(Param::Domain) => "duplicated parameter: domain",
            Rejection::Duplicate(Param::FileId) => "duplicated parameter: file_id",
            Rejection::Duplicate(Param::EventId) => "duplicated parameter: eid",
            Rejection::Empty(Param::Event) => "empty parameter: event",
            Rejection::Empty(Param::Domain) => "empty parameter: domain",
            Rejection::Empty(Param::FileId) => "empty parameter: file_id",
            Rejection::Empty(Param::EventId) => "empty parameter: eid",
            Rejection::BadEvent => "event must match [a-z0-9_]{1,32}",
            Rejection::EventNotAllowed => "event not in ingest.events allowlist",
            Rejection::BadDomain => "domain is not a valid hostname",
            Rejection::NonAsciiDomain => {
                "domain must be ASCII; send internationalised names as punycode (xn--...)"
            }
            Rejection::BadFileId => "file_id must be an integer >= 1",
            Rejection::BadPercentEncoding => "invalid percent-encoding",
            Rejection::BadUtf8 => "parameter is not valid UTF-8",
            Rejection::BadEventId => {
                "eid / event_id must be a UUID (8-4-4-4-12 hex digits), not the nil UUID"
            }
        }
    }

    /// Label for `ingest_events_rejected_total{reason=...}`.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Missing(Param::EventId) => "bad_event_id",
            Rejection::Missing(_) => "missing_param",
            Rejection::Duplicate(_) => "duplicate_param",
            Rejection::Empty(_) => "empty_param",
            Rejection::BadEvent => "bad_event",
            Rejection::EventNotAllowed => "event_not_allowed",
            Rejection::BadDomain | Rejection::NonAsciiDomain => "bad_domain",
            Rejection::BadFileId => "bad_file_id",
            Rejection::BadPercentEncoding | Rejection::BadUtf8 => "bad_encoding",
            Rejection::BadEventId => "bad_event_id",
        }
    }

    /// HTTP status of the answer.
    pub fn status(self) -> u16 {
        400
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for Rejection {}
