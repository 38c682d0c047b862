//! SQL literals: strings, bytes and times as the statements of `super::sql`, `super::rollups`
//! and friends spell them.
//!
//! Invariants: a string literal is escaped for a session with backslash escapes on (the
//! session set-up in `super::db` guarantees it), so no client text can end it early; bytes go
//! as `X'…'`, exact whatever the connection's character set; a time is UTC with millisecond
//! precision, the `DATETIME(3)` of `events.received_at`.

/// Appends `s` as a single-quoted SQL string literal, escaped for a session with backslash
/// escapes on.
pub fn push_quoted(s: &str, out: &mut Vec<u8>) {
    out.push(b'\'');
    for &b in s.as_bytes() {
        match b {
            b'\'' => out.extend_from_slice(b"\\'"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\0' => out.extend_from_slice(b"\\0"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0x1a => out.extend_from_slice(b"\\Z"),
            _ => out.push(b),
        }
    }
    out.push(b'\'');
}

/// Appends `X'…'`: any bytes, exactly, whatever the connection's character set.
pub fn push_hex_literal(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(b"X'");
    for &b in bytes {
        out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
    }
    out.push(b'\'');
}

/// Appends `YYYY-MM-DD HH:MM:SS.mmm` (UTC) for `ms` since the Unix epoch.
pub fn push_datetime_ms(ms: u64, out: &mut Vec<u8>) {
    let secs = ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let second_of_day = secs % 86_400;
    push_digits(year as u64, 4, out);
    out.push(b'-');
    push_digits(u64::from(month), 2, out);
    out.push(b'-');
    push_digits(u64::from(day), 2, out);
    out.push(b' ');
    push_digits(second_of_day / 3600, 2, out);
    out.push(b':');
    push_digits(second_of_day / 60 % 60, 2, out);
    out.push(b':');
    push_digits(second_of_day % 60, 2, out);
    out.push(b'.');
    push_digits(ms % 1000, 3, out);
}

fn push_digits(mut v: u64, width: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + width, b'0');
    for slot in out[start..].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datetime(ms: u64) -> String {
        let mut out = Vec::new();
        push_datetime_ms(ms, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn datetime_formatting() {
        assert_eq!(datetime(0), "1970-01-01 00:00:00.000");
        assert_eq!(datetime(1_763_923_170_123), "2025-11-23 18:39:30.123");
        // Leap day of a leap year divisible by 400, and of a regular leap year.
        assert_eq!(datetime(951_782_400_000), "2000-02-29 00:00:00.000");
        assert_eq!(datetime(1_709_251_199_999), "2024-02-29 23:59:59.999");
        assert_eq!(datetime(1_709_251_200_000), "2024-03-01 00:00:00.000");
        // 2100 is not a leap year.
        assert_eq!(datetime(4_107_542_400_000), "2100-03-01 00:00:00.000");
        assert_eq!(datetime(1_735_689_599_001), "2024-12-31 23:59:59.001");
    }

    #[test]
    fn quoting_escapes_specials() {
        let mut out = Vec::new();
        push_quoted("a'b\\c\0d\ne\rf\x1ag", &mut out);
        assert_eq!(out, b"'a\\'b\\\\c\\0d\\ne\\rf\\Zg'");
        out.clear();
        push_hex_literal(&[0, 0xab, 0x7f], &mut out);
        assert_eq!(out, b"X'00AB7F'");
    }
}
