//! A batch's rows as Native blocks: `events` rows, `ingest_rejects` rows, and how a batch is
//! cut into runs that each fall into one partition of `events` (one month, UTC).

use std::net::IpAddr;

use super::native::NativeBlock;
use super::schema::{EVENTS, REJECTS};
use crate::sink::{Batch, Row};
use crate::wal::identity::WalIdentity;

/// Longest error message stored with a dead letter, in characters.
pub const REJECT_MESSAGE_CHARS_MAX: usize = 1000;

/// Seconds and milliseconds of a receive time (`received_at`, `received_ms`). Times past
/// 2106 (beyond `DateTime`) are stored as its last second.
pub fn split_ts(ts_ms: u64) -> (u32, u16) {
    let secs = u32::try_from(ts_ms / 1000).unwrap_or(u32::MAX);
    (secs, (ts_ms % 1000) as u16)
}

/// `toYYYYMM` of a `DateTime('UTC')`: the partition of `events` a row goes to.
pub fn yyyymm_utc(secs: u32) -> u32 {
    // Civil from days (H. Hinnant), for days since 1970-01-01.
    let z = i64::from(secs / 86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year * 100 + month) as u32
}

/// The batch's rows `rows` cut where the partition (month) changes: index ranges, in order.
/// Rows are in WAL order, so each run is the next stretch of the lane; one run in nearly
/// every batch (all but those that straddle a month, or follow a clock step back over one).
pub fn runs(batch: &Batch, rows: std::ops::Range<usize>) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let all = batch.rows();
    let mut start = rows.start;
    for i in rows.start + 1..rows.end {
        if month_of(&all[i]) != month_of(&all[i - 1]) {
            out.push(start..i);
            start = i;
        }
    }
    if start < rows.end {
        out.push(start..rows.end);
    }
    out
}

fn month_of(row: &Row) -> u32 {
    yyyymm_utc(split_ts(row.ts_ms).0)
}

/// The `client_ip` value: the address as 16 bytes (IPv4 mapped into IPv6); zero if absent
/// or not an address.
pub fn ip_bytes(ip: Option<&str>) -> [u8; 16] {
    match ip.map(str::parse::<IpAddr>) {
        Some(Ok(IpAddr::V4(v4))) => v4.to_ipv6_mapped().octets(),
        Some(Ok(IpAddr::V6(v6))) => v6.octets(),
        _ => [0; 16],
    }
}

/// The `events` block of `batch.rows()[range]`, written into `buf`.
pub fn events_block(
    wal: &WalIdentity,
    batch: &Batch,
    range: std::ops::Range<usize>,
    buf: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let rows = &batch.rows()[range];
    let wal_id = wal.wal.to_string();
    let lane = batch.lane();
    let mut b = NativeBlock::new(EVENTS, rows.len(), buf);
    b.fixed(rows.iter().map(|r| split_ts(r.ts_ms).0.to_le_bytes()));
    b.fixed(rows.iter().map(|r| split_ts(r.ts_ms).1.to_le_bytes()));
    b.strings(rows.iter().map(|r| batch.event(r).as_bytes()));
    b.strings(rows.iter().map(|r| batch.domain(r).as_bytes()));
    b.fixed(rows.iter().map(|r| r.file_id.to_le_bytes()));
    b.fixed(rows.iter().map(|r| ip_bytes(batch.ip(r))));
    b.strings(rows.iter().map(|r| batch.user_agent(r).unwrap_or("").as_bytes()));
    b.strings(rows.iter().map(|r| batch.referer_host(r).unwrap_or("").as_bytes()));
    b.strings(rows.iter().map(|r| batch.extra(r).unwrap_or("").as_bytes()));
    b.fixed(rows.iter().map(|r| r.event_id.map_or([0; 16], |id| *id.bytes())));
    b.fixed(rows.iter().map(|r| r.country.map_or([0; 2], |c| c.bytes())));
    b.strings(rows.iter().map(|_| wal.node.as_bytes()));
    b.strings(rows.iter().map(|_| wal_id.as_bytes()));
    b.fixed(rows.iter().map(|_| lane.core.to_le_bytes()));
    b.fixed(rows.iter().map(|_| lane.incarnation.to_le_bytes()));
    b.fixed(rows.iter().map(|r| r.end.segment.to_le_bytes()));
    b.fixed(rows.iter().map(|r| r.end.offset.to_le_bytes()));
    b.finish()
}

/// The `ingest_rejects` block of all of `batch`'s rows, refused with `code` and `message`.
pub fn rejects_block(
    wal: &WalIdentity,
    batch: &Batch,
    code: u32,
    message: &str,
    now_secs: u32,
) -> Result<Vec<u8>, String> {
    let rows = batch.rows();
    let wal_id = wal.wal.to_string();
    let lane = batch.lane();
    let message: String = message.chars().take(REJECT_MESSAGE_CHARS_MAX).collect();
    let start = |r: &Row| r.end.offset.saturating_sub(batch.raw(r).len() as u64);
    let mut b = NativeBlock::new(REJECTS, rows.len(), Vec::new());
    b.strings(rows.iter().map(|_| wal.node.as_bytes()));
    b.strings(rows.iter().map(|_| wal_id.as_bytes()));
    b.fixed(rows.iter().map(|_| lane.core.to_le_bytes()));
    b.fixed(rows.iter().map(|_| lane.incarnation.to_le_bytes()));
    b.fixed(rows.iter().map(|r| r.end.segment.to_le_bytes()));
    b.fixed(rows.iter().map(|r| start(r).to_le_bytes()));
    b.fixed(rows.iter().map(|r| r.end.offset.to_le_bytes()));
    b.strings(rows.iter().map(|r| batch.raw(r)));
    b.fixed(rows.iter().map(|_| code.to_le_bytes()));
    b.strings(rows.iter().map(|_| message.as_bytes()));
    b.fixed(rows.iter().map(|_| now_secs.to_le_bytes()));
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::identity::{LaneId, WalId};
    use crate::wal::record::{DecodedContext, Event};
    use crate::wal::Position;

    fn batch_at(ts: &[u64]) -> Batch {
        let mut b = Batch::new(LaneId { core: 1, incarnation: 2 }, 0, Position::new(1, 0));
        for (i, &ts_ms) in ts.iter().enumerate() {
            let ev = Event { ts_ms, event: "play", domain: "a.org", file_id: 1 };
            let ctx = DecodedContext { ip: Some("10.0.0.1"), ..Default::default() };
            b.push(&ev, &ctx, b"raw\n", Position::new(1, 10 * (i as u64 + 1)));
        }
        b
    }

    #[test]
    fn months_are_utc_calendar_months() {
        assert_eq!(yyyymm_utc(0), 197001);
        assert_eq!(yyyymm_utc(951_782_400), 200002); // 2000-02-29 00:00
        assert_eq!(yyyymm_utc(1_764_547_199), 202511); // 2025-11-30 23:59:59
        assert_eq!(yyyymm_utc(1_764_547_200), 202512);
        assert_eq!(yyyymm_utc(u32::MAX), 210602);
        assert_eq!(split_ts(1_764_547_200_123), (1_764_547_200, 123));
    }

    #[test]
    fn a_batch_is_cut_where_the_month_changes() {
        let nov = 1_764_547_199_000;
        let dec = 1_764_547_200_000;
        assert_eq!(runs(&batch_at(&[]), 0..0), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(runs(&batch_at(&[nov, nov, nov]), 0..3), vec![0..3]);
        let straddles = batch_at(&[nov, dec, dec, nov]);
        assert_eq!(runs(&straddles, 0..4), vec![0..1, 1..3, 3..4]);
        assert_eq!(runs(&straddles, 2..4), vec![2..3, 3..4], "a suffix");
        assert_eq!(runs(&straddles, 4..4), Vec::<std::ops::Range<usize>>::new());
    }

    #[test]
    fn addresses_are_16_bytes() {
        assert_eq!(ip_bytes(Some("10.0.0.1"))[10..], [0xff, 0xff, 10, 0, 0, 1]);
        assert_eq!(ip_bytes(Some("::1"))[15], 1);
        assert_eq!(ip_bytes(None), [0; 16]);
        assert_eq!(ip_bytes(Some("nonsense")), [0; 16]);
    }

    #[test]
    fn blocks_fit_their_specs() {
        let wal = WalIdentity { node: "n".into(), wal: WalId(9) };
        let b = batch_at(&[1_000, 2_000]);
        let events = events_block(&wal, &b, 0..2, Vec::new()).unwrap();
        assert_eq!(events[..2], [EVENTS.len() as u8, 2]);
        let rejects = rejects_block(&wal, &b, 16, &"m".repeat(5000), 7).unwrap();
        assert_eq!(rejects[..2], [REJECTS.len() as u8, 2]);
        assert!(rejects.len() < 2 * REJECT_MESSAGE_CHARS_MAX + 600, "messages are cut");
    }
}
