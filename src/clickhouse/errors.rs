//! Which failure is `Unavailable`, `InDoubt` or `Refused` (contract 5 of `crate::sink`).
//!
//! The rule: a read (a `SELECT`, the schema's DDL, the probe of a step) commits nothing, so
//! it is `Unavailable` whatever went wrong. A write (a step row, a block of rows) is
//! - `Unavailable` if nothing was sent, or the server named a reason it checks before it
//!   commits a part (too many parts, memory, a running query of the same id, auth, …);
//! - `Refused { every_row: true }` if it was an `events` block and the server said the table
//!   does not fit our columns: no row of any batch would be taken, so the core dead-letters
//!   the batch (there is no row-by-row refusal: Native values are typed, nothing is parsed);
//! - `InDoubt` otherwise: lost on the way back, timed out, an error we do not know (286
//!   UNKNOWN_STATUS_OF_INSERT among them), or any failure after an earlier block of the
//!   same delivery was committed.

use super::http::HttpError;
use crate::sink::SinkError;

/// What was being done when a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A query that commits nothing.
    Read,
    /// An `ingest_cursors` row or an `ingest_rejects` block: our own tables.
    WriteOwn,
    /// An `events` block.
    WriteEvents,
}

/// Codes that say the table does not fit what we send: no such column, another type.
const SCHEMA_MISFIT: &[u32] = &[
    10,  // NOT_FOUND_COLUMN_IN_BLOCK
    16,  // NO_SUCH_COLUMN_IN_TABLE
    20,  // NUMBER_OF_COLUMNS_DOESNT_MATCH
    32,  // ATTEMPT_TO_READ_AFTER_EOF (our block read as other types)
    33,  // CANNOT_READ_ALL_DATA (same)
    44,  // ILLEGAL_COLUMN
    53,  // TYPE_MISMATCH
    70,  // CANNOT_CONVERT_TYPE
    368, // BAD_CAST
];

/// Codes the server checks before it commits anything, and that pass with time or an
/// operator: retry later.
const BEFORE_COMMIT: &[u32] = &[
    60,  // UNKNOWN_TABLE (created again at the next connect)
    81,  // UNKNOWN_DATABASE (same)
    159, // TIMEOUT_EXCEEDED
    164, // READONLY
    192, // UNKNOWN_USER
    193, // WRONG_PASSWORD
    194, // REQUIRED_PASSWORD
    195, // IP_ADDRESS_NOT_ALLOWED
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    203, // NO_FREE_CONNECTION
    209, // SOCKET_TIMEOUT (reading our body)
    210, // NETWORK_ERROR (same)
    216, // QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING
    236, // ABORTED
    241, // MEMORY_LIMIT_EXCEEDED
    242, // TABLE_IS_READ_ONLY
    243, // NOT_ENOUGH_SPACE
    252, // TOO_MANY_PARTS
    394, // QUERY_WAS_CANCELLED
    497, // ACCESS_DENIED
    516, // AUTHENTICATION_FAILED
];

/// Whether a server error code says the schema does not fit our statements (counted as a
/// schema error: an operator has to look).
pub fn is_schema_misfit(code: u32) -> bool {
    SCHEMA_MISFIT.contains(&code) || code == 60 || code == 81
}

/// Sorts a failed request. `committed_before`: an earlier block of the same delivery was
/// committed, so nothing may be called "nothing committed".
pub fn sorted(e: HttpError, step: Step, committed_before: bool, context: &str) -> SinkError {
    let doubt = |m: String| SinkError::InDoubt(format!("{context}: {m}"));
    let unavailable = |m: String| SinkError::Unavailable(format!("{context}: {m}"));
    if committed_before {
        return doubt(format!("{e} (after part of the delivery was committed)"));
    }
    match (step, e) {
        (Step::Read, e) => unavailable(e.to_string()),
        (_, e @ HttpError::Connect(_)) => unavailable(e.to_string()),
        (_, e @ HttpError::Lost(_)) => doubt(e.to_string()),
        (Step::WriteEvents, HttpError::Server { code, message, .. }) if SCHEMA_MISFIT.contains(&code) => {
            SinkError::Refused { code, message, every_row: true }
        }
        (_, HttpError::Server { code, message, status })
            if BEFORE_COMMIT.contains(&code) || (SCHEMA_MISFIT.contains(&code) && code != 0) =>
        {
            unavailable(format!("server error {code} (HTTP {status}): {message}"))
        }
        (_, e @ HttpError::Server { .. }) => doubt(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u32) -> HttpError {
        HttpError::Server { status: 500, code, message: format!("Code: {code}") }
    }

    #[test]
    fn reads_are_never_in_doubt() {
        for e in [HttpError::Lost("x".into()), server(1), server(16)] {
            assert!(matches!(sorted(e, Step::Read, false, "r"), SinkError::Unavailable(_)));
        }
    }

    #[test]
    fn writes_are_sorted_by_what_the_server_said() {
        let s = |e, step| sorted(e, step, false, "w");
        assert!(matches!(s(HttpError::Connect("x".into()), Step::WriteEvents), SinkError::Unavailable(_)));
        assert!(matches!(s(HttpError::Lost("x".into()), Step::WriteEvents), SinkError::InDoubt(_)));
        assert!(matches!(
            s(server(16), Step::WriteEvents),
            SinkError::Refused { code: 16, every_row: true, .. }
        ));
        assert!(matches!(s(server(16), Step::WriteOwn), SinkError::Unavailable(_)), "our own table: wait");
        assert!(matches!(s(server(252), Step::WriteEvents), SinkError::Unavailable(_)));
        assert!(matches!(s(server(286), Step::WriteEvents), SinkError::InDoubt(_)));
        assert!(matches!(s(server(1002), Step::WriteEvents), SinkError::InDoubt(_)));
        assert!(is_schema_misfit(368) && is_schema_misfit(60) && !is_schema_misfit(252));
    }

    #[test]
    fn after_a_committed_block_everything_is_in_doubt() {
        let e = sorted(HttpError::Connect("x".into()), Step::WriteEvents, true, "w");
        assert!(matches!(e, SinkError::InDoubt(ref m) if m.contains("after part")), "{e:?}");
    }
}
