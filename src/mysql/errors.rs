//! How a failed MySQL step is sorted into a [`SinkError`] kind: what the delivery core must do.
//!
//! | what failed | kind |
//! |---|---|
//! | anything while `COMMIT` was on its way (error, timeout, lost socket) | `InDoubt` |
//! | connect, IO, timeouts, lost connection, deadlock 1213, lock wait 1205, server going away | `Unavailable` |
//! | a statement over the packet limit (server 1153, or a row too large for the limit alone) | `Refused` |
//! | a row the schema refuses under strict mode (1406, 1366, 1264, 1048, 1292, …) | `Refused` |
//! | a schema that does not fit our statements (1054 unknown column, 1146 no such table, 1142 denied, …) | `Unavailable`, logged as an error |
//! | any other server error | `Unavailable` |
//!
//! Why a schema mismatch is *not* `Refused { every_row: true }`: every statement of every
//! batch fails the same way (a dropped table, a missing migration, a revoked grant, the wrong
//! database), so dead-lettering would empty the whole WAL into `ingest_rejects` because of a
//! configuration accident. Sorted as `Unavailable`, the lane waits with its events in the WAL
//! until an operator fixes the schema; the sink logs the error loudly and counts it. So this
//! sink never answers `every_row: true`: every `Refused` is about the data of some rows, and
//! the core bisects down to them. Only codes known to be about data are `Refused`; an unknown
//! code retries, because a wrong guess there would dead-letter good events.

use crate::sink::SinkError;

use super::db::DbError;

/// `ER_NET_PACKET_TOO_LARGE`: the server's code for a packet over `max_allowed_packet`, also
/// used for a row that is too large for the statement limit on its own.
pub const ER_NET_PACKET_TOO_LARGE: u32 = 1153;

/// Server errors about the data of a row (strict mode), which no retry will change.
const DATA_ERRORS: &[u16] = &[
    1048, // column cannot be null
    1062, // duplicate entry (a unique key an operator added to events)
    1153, // packet too large
    1264, // out of range
    1265, // data truncated
    1292, // truncated incorrect value (dates, numbers)
    1300, // invalid character string
    1364, // field has no default value
    1366, // incorrect value for a column
    1367, // illegal value
    1406, // data too long
    1411, // incorrect datetime value
    1452, // foreign key constraint (an operator added one)
    1690, // value out of range
    3140, // invalid JSON text
    3819, // check constraint violated (MySQL)
    4025, // check constraint violated (MariaDB)
];

/// Server errors that say our statements do not fit the schema or the grants.
const SCHEMA_ERRORS: &[u16] = &[
    1044, // access denied to the database
    1049, // unknown database
    1054, // unknown column
    1064, // syntax error (a server that does not speak our dialect)
    1109, // unknown table in a multi-table statement
    1142, // command denied on a table
    1143, // command denied on a column
    1146, // no such table
    1356, // a view that refers to something invalid
];

/// Where a step was when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing was sent that could commit.
    BeforeCommit,
    /// `COMMIT` was sent (or was being sent).
    Commit,
}

/// What a failure means for the schema, for the loud log line and the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Transient,
    Data,
    Schema,
}

/// The cause of `e`, by server code or by what the driver reported.
pub fn cause(e: &DbError) -> Cause {
    match e.server_code() {
        Some(code) if DATA_ERRORS.contains(&code) => Cause::Data,
        Some(code) if SCHEMA_ERRORS.contains(&code) => Cause::Schema,
        Some(_) => Cause::Transient,
        None if client_packet_too_large(e) => Cause::Data,
        // A cursor or domain row we cannot read: the table is not what we created.
        None if matches!(e, DbError::Decode { .. } | DbError::RollupChanged { .. }) => Cause::Schema,
        None => Cause::Transient,
    }
}

/// The kind of failure `e` is at `phase` (module doc).
pub fn sort(e: &DbError, phase: Phase) -> SinkError {
    let message = e.to_string();
    if phase == Phase::Commit {
        return SinkError::InDoubt(message);
    }
    match cause(e) {
        Cause::Data => {
            let code = e.server_code().map_or(ER_NET_PACKET_TOO_LARGE, u32::from);
            SinkError::Refused { code, message, every_row: false }
        }
        Cause::Transient | Cause::Schema => SinkError::Unavailable(message),
    }
}

/// mysql_async refuses to send a packet over the server's limit (read at connect) before
/// writing anything; it says so through an `io::Error` wrapping mysql_common's codec error.
fn client_packet_too_large(e: &DbError) -> bool {
    use mysql_async::{DriverError, Error, IoError};
    match e {
        DbError::Driver { source: Error::Driver(DriverError::PacketTooLarge), .. } => true,
        DbError::Driver { source: Error::Io(IoError::Io(io)), .. } => {
            io.get_ref().is_some_and(|inner| inner.to_string().contains("larger than max_allowed_packet"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> DbError {
        let source = mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message: format!("error {code}"),
            state: "HY000".into(),
        });
        DbError::Driver { what: "insert", source }
    }

    #[test]
    fn data_errors_are_refused_with_their_code() {
        for code in [1406, 1366, 1264, 1048, 1292, 1153] {
            match sort(&server(code), Phase::BeforeCommit) {
                SinkError::Refused { code: c, every_row: false, message } => {
                    assert_eq!(c, u32::from(code));
                    assert!(message.contains(&format!("error {code}")), "{message}");
                }
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn locks_schema_and_unknown_codes_are_retried() {
        for code in [1213, 1205, 1054, 1146, 1142, 1927, 9999] {
            assert!(matches!(sort(&server(code), Phase::BeforeCommit), SinkError::Unavailable(_)), "{code}");
        }
        assert_eq!(cause(&server(1146)), Cause::Schema);
        assert_eq!(cause(&server(1213)), Cause::Transient);
        let timeout = DbError::Timeout { what: "insert", ms: 5 };
        assert!(matches!(sort(&timeout, Phase::BeforeCommit), SinkError::Unavailable(_)));
    }

    #[test]
    fn anything_during_commit_is_in_doubt() {
        for e in [server(1406), server(1213), DbError::Timeout { what: "commit", ms: 5 }] {
            assert!(matches!(sort(&e, Phase::Commit), SinkError::InDoubt(_)), "{e}");
        }
    }

    #[test]
    fn client_side_packet_too_large_is_refused_as_1153() {
        let io = std::io::Error::other("Packet is larger than max_allowed_packet");
        let e = DbError::Driver { what: "insert", source: mysql_async::Error::Io(io.into()) };
        assert!(matches!(
            sort(&e, Phase::BeforeCommit),
            SinkError::Refused { code: ER_NET_PACKET_TOO_LARGE, every_row: false, .. }
        ));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let e = DbError::Driver { what: "insert", source: mysql_async::Error::Io(reset.into()) };
        assert!(matches!(sort(&e, Phase::BeforeCommit), SinkError::Unavailable(_)));
    }
}
