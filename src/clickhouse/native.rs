//! ClickHouse's `Native` format, the encoding side: one block, column after column.
//!
//! ```text
//! block   = varuint(columns) varuint(rows) column*
//! column  = string(name) string(type) value{rows}
//! string  = varuint(len) bytes            (String values too)
//! fixed   = little-endian bytes            (UInt8/16/32/64, DateTime = UInt32 seconds, FixedString(N))
//! ```
//!
//! Why Native and not TSV or RowBinary: the server reads a Native block whole before it
//! inserts anything, and refuses a block whose columns end early ("Cannot read all data",
//! "Attempt to read after eof"). A row format is read row by row until the body ends, and a
//! body cut at a row boundary (a connection closed mid-request) is inserted as the prefix it
//! is; a Native body cut anywhere inserts nothing (tried on 18.16: `super` relies on it).
//!
//! The writer checks its own output in pairs with the column specs: each column's name and
//! type come from the spec, and each must get exactly `rows` values; [`NativeBlock::finish`]
//! fails otherwise.

use super::schema::Column;

/// One block being written.
pub struct NativeBlock<'s> {
    buf: Vec<u8>,
    rows: usize,
    spec: &'s [Column],
    /// Index of the next column of `spec` to write.
    next: usize,
    /// The first mismatch between what was written and the spec.
    error: Option<String>,
}

impl<'s> NativeBlock<'s> {
    /// A block of `rows` rows with the columns of `spec`, written into `buf` (cleared).
    pub fn new(spec: &'s [Column], rows: usize, mut buf: Vec<u8>) -> NativeBlock<'s> {
        buf.clear();
        put_varuint(&mut buf, spec.len() as u64);
        put_varuint(&mut buf, rows as u64);
        NativeBlock { buf, rows, spec, next: 0, error: None }
    }

    /// The next column, of a fixed-width type of `N` bytes, from little-endian values.
    pub fn fixed<const N: usize>(&mut self, values: impl Iterator<Item = [u8; N]>) {
        if !self.begin_column(Some(N)) {
            return;
        }
        let mut n = 0;
        for v in values {
            self.buf.extend_from_slice(&v);
            n += 1;
        }
        self.end_column(n);
    }

    /// The next column, a `String`.
    pub fn strings<'a>(&mut self, values: impl Iterator<Item = &'a [u8]>) {
        if !self.begin_column(None) {
            return;
        }
        let mut n = 0;
        for v in values {
            put_varuint(&mut self.buf, v.len() as u64);
            self.buf.extend_from_slice(v);
            n += 1;
        }
        self.end_column(n);
    }

    fn begin_column(&mut self, width: Option<usize>) -> bool {
        let Some(col) = self.spec.get(self.next) else {
            self.fail(format!("more columns than the {} of the spec", self.spec.len()));
            return false;
        };
        if fixed_width(col.ty) != width {
            self.fail(format!("column {} is {}, written as width {width:?}", col.name, col.ty));
            return false;
        }
        put_string(&mut self.buf, col.name.as_bytes());
        put_string(&mut self.buf, col.ty.as_bytes());
        true
    }

    fn end_column(&mut self, n: usize) {
        if n != self.rows {
            let name = self.spec[self.next].name;
            self.fail(format!("column {name} got {n} values for {} rows", self.rows));
        }
        self.next += 1;
    }

    fn fail(&mut self, why: String) {
        self.error.get_or_insert(why);
    }

    /// The encoded block, or what did not match the spec.
    pub fn finish(self) -> Result<Vec<u8>, String> {
        match self.error {
            Some(why) => Err(why),
            None if self.next != self.spec.len() => {
                Err(format!("{} of {} columns written", self.next, self.spec.len()))
            }
            None => Ok(self.buf),
        }
    }
}

/// Bytes per value of a fixed-width type we write; `None` for `String`.
pub fn fixed_width(ty: &str) -> Option<usize> {
    match ty {
        "UInt8" => Some(1),
        "UInt16" | "FixedString(2)" => Some(2),
        "UInt32" | "DateTime('UTC')" => Some(4),
        "UInt64" => Some(8),
        "FixedString(16)" => Some(16),
        _ => None,
    }
}

/// LEB128, as ClickHouse's `writeVarUInt`.
pub fn put_varuint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_string(buf: &mut Vec<u8>, s: &[u8]) {
    put_varuint(buf, s.len() as u64);
    buf.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    static SPEC: &[Column] =
        &[Column { name: "a", ty: "UInt16", comment: "" }, Column { name: "s", ty: "String", comment: "" }];

    #[test]
    fn a_block_is_header_then_columns() {
        let mut b = NativeBlock::new(SPEC, 2, Vec::new());
        b.fixed([1u16, 300].into_iter().map(u16::to_le_bytes));
        b.strings([&b"x"[..], &[0u8; 200][..]].into_iter());
        let out = b.finish().unwrap();
        let mut want = vec![2, 2, 1, b'a', 6];
        want.extend_from_slice(b"UInt16");
        want.extend_from_slice(&[1, 0, 44, 1, 1, b's', 6]);
        want.extend_from_slice(b"String");
        want.extend_from_slice(&[1, b'x', 0xc8, 0x01]);
        want.extend_from_slice(&[0; 200]);
        assert_eq!(out, want);
    }

    #[test]
    fn a_block_that_does_not_fit_its_spec_is_refused() {
        let mut short = NativeBlock::new(SPEC, 2, Vec::new());
        short.fixed([1u16].into_iter().map(u16::to_le_bytes));
        short.strings([&b"x"[..], b"y"].into_iter());
        assert!(short.finish().unwrap_err().contains("got 1 values"));
        let mut typed = NativeBlock::new(SPEC, 1, Vec::new());
        typed.fixed([1u64].into_iter().map(u64::to_le_bytes));
        assert!(typed.finish().unwrap_err().contains("UInt16"));
        let missing = NativeBlock::new(SPEC, 0, Vec::new());
        assert!(missing.finish().unwrap_err().contains("0 of 2"));
    }

    #[test]
    fn varuints_are_leb128() {
        let mut buf = Vec::new();
        for v in [0u64, 127, 128, 16_384, u64::MAX] {
            put_varuint(&mut buf, v);
        }
        assert_eq!(buf[..6], [0, 127, 0x80, 1, 0x80, 0x80]);
        assert_eq!(buf.len(), 1 + 1 + 2 + 3 + 10);
    }
}
