//! `Content-Encoding` of `POST /log` bodies: `gzip`, `deflate` (zlib, or raw deflate as some
//! clients send it) and `identity`. Pure: no IO.
//!
//! Invariants:
//! - the decoded body is at most `max_bytes` (`http.max_body_bytes`, the same cap as a plain
//!   body) and at most `max_ratio` (`http.max_decompression_ratio`) times the encoded body;
//!   decoding stops one byte past the smaller bound, so a bomb costs at most that much memory
//!   and the CPU to produce it, whatever it would expand to ([`DecodeError::TooLarge`],
//!   [`DecodeError::Ratio`]: 413);
//! - every byte of the input belongs to the encoded body: a truncated stream, a bad checksum
//!   or bytes after the end of the (last) gzip member are [`DecodeError::Malformed`] (400);
//! - a coding we do not implement, or more than one coding, is [`UnsupportedEncoding`] (415);
//! - the decoder state and the output buffer belong to one core and are reused: after the
//!   first body of each coding, decoding allocates nothing (the output grows to the cap once).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use flate2::{Decompress, FlushDecompress, Status};

/// Window of the decoders (2^15 bytes, the largest zlib allows, so every stream decodes).
const WINDOW_BITS: u8 = 15;
/// Output reserved per step while the buffer is below the cap.
const STEP_BYTES: usize = 16 * 1024;

/// The codings a body can arrive in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Deflate,
}

impl Coding {
    /// Every coding, in the order of the metric slots.
    pub const ALL: [Coding; 3] = [Coding::Identity, Coding::Gzip, Coding::Deflate];

    /// The `encoding` label of the body metrics.
    pub fn label(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// A `Content-Encoding` we do not decode (415).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsupportedEncoding;

impl UnsupportedEncoding {
    /// One line for the response body.
    pub fn reason(self) -> &'static str {
        "Content-Encoding must be one of gzip, deflate or identity"
    }
}

/// The coding of a body from its raw `Content-Encoding` value (`None`: no header). Tokens are
/// case-insensitive, `x-gzip` is `gzip` (RFC 9110 §8.4.1.3), `identity` entries of a list are
/// skipped; more than one other coding is refused (nobody stacks them for a beacon).
pub fn coding_of(header: Option<&[u8]>) -> Result<Coding, UnsupportedEncoding> {
    let Some(value) = header else {
        return Ok(Coding::Identity);
    };
    let mut coding = Coding::Identity;
    for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        let this = match token.len() {
            0 => continue,
            4 if token.eq_ignore_ascii_case(b"gzip") => Coding::Gzip,
            6 if token.eq_ignore_ascii_case(b"x-gzip") => Coding::Gzip,
            7 if token.eq_ignore_ascii_case(b"deflate") => Coding::Deflate,
            8 if token.eq_ignore_ascii_case(b"identity") => continue,
            _ => return Err(UnsupportedEncoding),
        };
        if coding != Coding::Identity {
            return Err(UnsupportedEncoding);
        }
        coding = this;
    }
    Ok(coding)
}

/// The bounds of one decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest decoded body, bytes (`http.max_body_bytes`).
    pub max_bytes: usize,
    /// Largest decoded / encoded size ratio (`http.max_decompression_ratio`).
    pub max_ratio: usize,
}

impl DecodeLimits {
    /// Most decoded bytes allowed for `encoded_len` input bytes.
    fn bound(self, encoded_len: usize) -> usize {
        self.max_bytes.min(encoded_len.saturating_mul(self.max_ratio))
    }
}

/// Why an encoded body cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Decoded, it would pass `http.max_body_bytes` (413; a bomb).
    TooLarge,
    /// Decoded, it would pass `http.max_decompression_ratio` times its encoded size (413; a bomb).
    Ratio,
    /// Not a valid stream of its coding (400).
    Malformed(&'static str),
}

impl DecodeError {
    pub fn status(self) -> u16 {
        match self {
            DecodeError::TooLarge | DecodeError::Ratio => 413,
            DecodeError::Malformed(_) => 400,
        }
    }

    /// Label for the rejected-events metric.
    pub fn label(self) -> &'static str {
        match self {
            DecodeError::TooLarge | DecodeError::Ratio => "body_bomb",
            DecodeError::Malformed(_) => "bad_compression",
        }
    }

    /// Whether the metrics count it as a bomb refused.
    pub fn is_bomb(self) -> bool {
        matches!(self, DecodeError::TooLarge | DecodeError::Ratio)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge => f.write_str("decompressed body exceeds http.max_body_bytes"),
            DecodeError::Ratio => f.write_str("body expands more than http.max_decompression_ratio"),
            DecodeError::Malformed(what) => write!(f, "malformed compressed body: {what}"),
        }
    }
}

/// One core's decoders and output buffer, created on first use and reused.
#[derive(Default)]
pub struct BodyDecoder {
    gzip: Option<Box<Decompress>>,
    /// zlib-wrapped deflate, reset to raw deflate for a stream without the zlib header.
    deflate: Option<Box<Decompress>>,
    out: Vec<u8>,
}

impl fmt::Debug for BodyDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyDecoder").field("out_capacity", &self.out.capacity()).finish_non_exhaustive()
    }
}

impl BodyDecoder {
    /// Decodes `input` of `coding` within `limits`; the decoded bytes live in the decoder until
    /// the next call. `Identity` is copied as it is (the caller's limit already applies).
    pub fn decode(
        &mut self,
        coding: Coding,
        input: &[u8],
        limits: DecodeLimits,
    ) -> Result<&mut [u8], DecodeError> {
        self.out.clear();
        let bound = Bound { bytes: limits.bound(input.len()), max_bytes: limits.max_bytes };
        match coding {
            Coding::Identity => self.out.extend_from_slice(input),
            Coding::Gzip => {
                let state = self.gzip.get_or_insert_with(|| Box::new(Decompress::new_gzip(WINDOW_BITS)));
                inflate_members(state, input, bound, &mut self.out)?;
            }
            Coding::Deflate => {
                let state = self.deflate.get_or_insert_with(|| Box::new(Decompress::new(true)));
                state.reset(is_zlib_header(input));
                inflate_one(state, input, bound, &mut self.out)?;
                if state.total_in() as usize != input.len() {
                    return Err(DecodeError::Malformed("bytes after the end of the stream"));
                }
            }
        }
        Ok(&mut self.out)
    }
}

/// Whether `input` opens with a zlib header (RFC 1950 §2.2): deflate method, a window zlib
/// accepts, and the check bits. Raw deflate rarely passes this by accident, and if it does
/// the stream fails its Adler-32 check and is refused, never misread.
fn is_zlib_header(input: &[u8]) -> bool {
    match input {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    }
}

/// The output bound of one body, and which error passing it is.
#[derive(Debug, Clone, Copy)]
struct Bound {
    /// The smaller of the size cap and the ratio cap.
    bytes: usize,
    /// The size cap: past `bytes` but not past this, the ratio was the bound.
    max_bytes: usize,
}

impl Bound {
    fn passed(self) -> DecodeError {
        if self.bytes == self.max_bytes {
            DecodeError::TooLarge
        } else {
            DecodeError::Ratio
        }
    }
}

/// gzip allows several members one after the other (RFC 1952 §2.2); each is inflated in turn,
/// all into one output under one bound.
fn inflate_members(
    state: &mut Decompress,
    input: &[u8],
    bound: Bound,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let mut at = 0;
    while at < input.len() {
        state.reset(true);
        inflate_one(state, &input[at..], bound, out)?;
        at += state.total_in() as usize;
    }
    if input.is_empty() {
        return Err(DecodeError::Malformed("truncated stream"));
    }
    Ok(())
}

/// Inflates one stream from the start of `input`, appending to `out`, until its end.
fn inflate_one(
    state: &mut Decompress,
    input: &[u8],
    bound: Bound,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    loop {
        // Room for one byte past the bound, so passing it is seen, never silently cut.
        let room = (bound.bytes + 1).saturating_sub(out.len()).min(STEP_BYTES);
        let (in_before, out_before) = (state.total_in(), out.len());
        let rest = input.get(in_before as usize..).unwrap_or_default();
        if out.capacity() < out_before + room {
            // Double, as a Vec would, but never past the bound: the buffer stays within it.
            let want = (out.capacity() * 2).max(out_before + room).min(bound.bytes + 1);
            out.reserve_exact(want - out_before);
        }
        let status = inflate_step(state, rest, out, room)?;
        if out.len() > bound.bytes {
            return Err(bound.passed());
        }
        match status {
            Status::StreamEnd => return Ok(()),
            _ if state.total_in() == in_before && out.len() == out_before => {
                return Err(DecodeError::Malformed("truncated stream"));
            }
            _ => {}
        }
    }
}

/// One call into zlib writing at most `room` bytes after `out`'s end.
fn inflate_step(
    state: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    room: usize,
) -> Result<Status, DecodeError> {
    let len = out.len();
    out.resize(len + room, 0);
    let before = state.total_out();
    let result = state.decompress(input, &mut out[len..], FlushDecompress::None);
    let written = usize::try_from(state.total_out() - before).unwrap_or(usize::MAX).min(room);
    out.truncate(len + written);
    result.map_err(|_| DecodeError::Malformed("corrupt data or checksum"))
}

/// Body-coding metrics of one core: bodies, bytes in and out per coding, bombs refused.
#[derive(Debug, Default)]
pub struct CodingCounters {
    bodies: [AtomicU64; Coding::ALL.len()],
    bytes_in: [AtomicU64; Coding::ALL.len()],
    bytes_out: [AtomicU64; Coding::ALL.len()],
    bombs: AtomicU64,
}

/// Sums of [`CodingCounters`] over the cores, indexed like [`Coding::ALL`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CodingTotals {
    pub bodies: [u64; Coding::ALL.len()],
    pub bytes_in: [u64; Coding::ALL.len()],
    pub bytes_out: [u64; Coding::ALL.len()],
    pub bombs: u64,
}

impl CodingCounters {
    /// Counts one decoded body.
    pub fn count_body(&self, coding: Coding, bytes_in: usize, bytes_out: usize) {
        // Written by its own core only (see `crate::metrics`): relaxed increments.
        self.bodies[coding.slot()].fetch_add(1, Relaxed);
        self.bytes_in[coding.slot()].fetch_add(bytes_in as u64, Relaxed);
        self.bytes_out[coding.slot()].fetch_add(bytes_out as u64, Relaxed);
    }

    /// Counts one body refused as a bomb.
    pub fn count_bomb(&self) {
        self.bombs.fetch_add(1, Relaxed);
    }

    /// Adds this core's counts to `totals`.
    pub fn add_to(&self, totals: &mut CodingTotals) {
        for i in 0..Coding::ALL.len() {
            totals.bodies[i] += self.bodies[i].load(Relaxed);
            totals.bytes_in[i] += self.bytes_in[i].load(Relaxed);
            totals.bytes_out[i] += self.bytes_out[i].load(Relaxed);
        }
        totals.bombs += self.bombs.load(Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;

    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits { max_bytes: 64 * 1024, max_ratio: 100 };

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode(coding: Coding, input: &[u8], limits: DecodeLimits) -> Result<Vec<u8>, DecodeError> {
        BodyDecoder::default().decode(coding, input, limits).map(|b| b.to_vec())
    }

    /// A JSON batch like an SDK sends: 100 similar events.
    fn batch() -> Vec<u8> {
        let items: Vec<String> = (0..100)
            .map(|i| format!(r#"{{"event":"play","domain":"piratka.biz","file_id":{}}}"#, 109_454 + i * 7))
            .collect();
        format!("[{}]", items.join(",")).into_bytes()
    }

    #[test]
    fn header_values() {
        assert_eq!(coding_of(None), Ok(Coding::Identity));
        assert_eq!(coding_of(Some(b"gzip")), Ok(Coding::Gzip));
        assert_eq!(coding_of(Some(b"X-GZIP")), Ok(Coding::Gzip));
        assert_eq!(coding_of(Some(b" Deflate ")), Ok(Coding::Deflate));
        assert_eq!(coding_of(Some(b"identity")), Ok(Coding::Identity));
        assert_eq!(coding_of(Some(b"identity, gzip")), Ok(Coding::Gzip));
        assert_eq!(coding_of(Some(b"")), Ok(Coding::Identity));
        for bad in [&b"br"[..], b"zstd", b"compress", b"gzip, deflate", b"gzip, gzip", b"gzip;q=1"] {
            assert_eq!(coding_of(Some(bad)), Err(UnsupportedEncoding), "{}", String::from_utf8_lossy(bad));
        }
        assert!(!UnsupportedEncoding.reason().contains('\n'));
    }

    #[test]
    fn gzip_zlib_and_raw_deflate_round_trip() {
        let body = batch();
        assert_eq!(decode(Coding::Gzip, &gzip(&body), LIMITS).unwrap(), body);
        assert_eq!(decode(Coding::Deflate, &zlib(&body), LIMITS).unwrap(), body);
        assert_eq!(decode(Coding::Deflate, &raw_deflate(&body), LIMITS).unwrap(), body);
        assert_eq!(decode(Coding::Identity, &body, LIMITS).unwrap(), body);
        assert_eq!(decode(Coding::Gzip, &gzip(b""), LIMITS).unwrap(), b"");
    }

    #[test]
    fn a_real_batch_compresses_well_below_the_default_ratio() {
        let body = batch();
        let ratio = body.len() / gzip(&body).len();
        assert!((3..100).contains(&ratio), "a JSON batch compresses {ratio}x");
    }

    #[test]
    fn gzip_members_are_concatenated() {
        let two = [gzip(b"event=play&"), gzip(b"domain=a.b&file_id=1")].concat();
        assert_eq!(decode(Coding::Gzip, &two, LIMITS).unwrap(), b"event=play&domain=a.b&file_id=1");
    }

    #[test]
    fn size_cap_exact_and_one_past() {
        let body = vec![b'x'; 1000];
        let limits = DecodeLimits { max_bytes: 1000, max_ratio: 1_000_000 };
        assert_eq!(decode(Coding::Gzip, &gzip(&body), limits).unwrap().len(), 1000);
        let limits = DecodeLimits { max_bytes: 999, ..limits };
        assert_eq!(decode(Coding::Gzip, &gzip(&body), limits), Err(DecodeError::TooLarge));
        assert_eq!(decode(Coding::Deflate, &zlib(&body), limits), Err(DecodeError::TooLarge));
        assert_eq!(DecodeError::TooLarge.status(), 413);
    }

    #[test]
    fn ratio_cap_exact_and_one_past() {
        let body = vec![b'x'; 5000];
        let encoded = gzip(&body);
        let exact = DecodeLimits { max_bytes: 1 << 20, max_ratio: body.len().div_ceil(encoded.len()) };
        assert!(decode(Coding::Gzip, &encoded, exact).is_ok());
        let under = DecodeLimits { max_ratio: body.len() / encoded.len() - 1, ..exact };
        assert_eq!(decode(Coding::Gzip, &encoded, under), Err(DecodeError::Ratio));
        assert!(DecodeError::Ratio.is_bomb() && DecodeError::TooLarge.is_bomb());
    }

    #[test]
    fn a_bomb_costs_bounded_memory() {
        // 1 GiB of zeros compresses to ~1 MiB; build a smaller one the same way, 64 MiB.
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            e.write_all(&zeros).unwrap();
        }
        let bomb = e.finish().unwrap();
        let mut decoder = BodyDecoder::default();
        assert_eq!(decoder.decode(Coding::Gzip, &bomb, LIMITS), Err(DecodeError::TooLarge));
        assert!(decoder.out.capacity() <= LIMITS.max_bytes + 1, "{}", decoder.out.capacity());
        // With a size cap as large as the bomb, the ratio stops it.
        let mut decoder = BodyDecoder::default();
        let limits = DecodeLimits { max_bytes: 64 << 20, ..LIMITS };
        assert_eq!(decoder.decode(Coding::Gzip, &bomb, limits), Err(DecodeError::Ratio));
        let bound = bomb.len() * LIMITS.max_ratio;
        assert!(decoder.out.capacity() <= bound + 1, "{}", decoder.out.capacity());
    }

    #[test]
    fn malformed_streams() {
        let good = gzip(&batch());
        let cases: Vec<(Coding, Vec<u8>)> = vec![
            (Coding::Gzip, good[..good.len() - 1].to_vec()),
            (Coding::Gzip, good[..10].to_vec()),
            (Coding::Gzip, Vec::new()),
            (Coding::Gzip, b"not gzip at all".to_vec()),
            (Coding::Gzip, [good.clone(), b"junk".to_vec()].concat()),
            (Coding::Deflate, [zlib(b"abc"), b"x".to_vec()].concat()),
            (Coding::Deflate, Vec::new()),
            (Coding::Deflate, vec![0xff; 40]),
        ];
        for (coding, input) in cases {
            let got = decode(coding, &input, LIMITS);
            assert!(matches!(got, Err(DecodeError::Malformed(_))), "{coding:?} {input:?}: {got:?}");
        }
        let mut flipped = good.clone();
        let crc_at = flipped.len() - 8;
        flipped[crc_at] ^= 1;
        assert_eq!(
            decode(Coding::Gzip, &flipped, LIMITS),
            Err(DecodeError::Malformed("corrupt data or checksum"))
        );
        assert_eq!(DecodeError::Malformed("x").status(), 400);
    }

    #[test]
    fn decoder_is_reused_without_growing() {
        let mut decoder = BodyDecoder::default();
        let body = batch();
        let (gz, zl) = (gzip(&body), zlib(&body));
        decoder.decode(Coding::Gzip, &gz, LIMITS).unwrap();
        decoder.decode(Coding::Deflate, &zl, LIMITS).unwrap();
        let capacity = decoder.out.capacity();
        for _ in 0..10 {
            assert_eq!(decoder.decode(Coding::Gzip, &gz, LIMITS).unwrap(), &body[..]);
            assert!(decoder.decode(Coding::Gzip, b"junk", LIMITS).is_err());
            assert_eq!(decoder.decode(Coding::Deflate, &zl, LIMITS).unwrap(), &body[..]);
        }
        assert_eq!(decoder.out.capacity(), capacity);
    }

    #[test]
    fn counters_sum() {
        let (a, b) = (CodingCounters::default(), CodingCounters::default());
        a.count_body(Coding::Gzip, 10, 100);
        b.count_body(Coding::Gzip, 5, 50);
        b.count_bomb();
        let mut t = CodingTotals::default();
        a.add_to(&mut t);
        b.add_to(&mut t);
        assert_eq!((t.bodies[1], t.bytes_in[1], t.bytes_out[1], t.bombs), (2, 15, 150, 1));
        let labels: Vec<_> = Coding::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(labels, ["identity", "gzip", "deflate"]);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics_and_stays_bounded(
            input in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            prefix in 0usize..3,
        ) {
            let headers: [&[u8]; 3] = [b"", &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3], &[0x78, 0x9c]];
            let input = [headers[prefix], &input].concat();
            let limits = DecodeLimits { max_bytes: 4096, max_ratio: 10 };
            let mut decoder = BodyDecoder::default();
            for coding in Coding::ALL {
                if let Ok(out) = decoder.decode(coding, &input, limits) {
                    proptest::prop_assert!(out.len() <= 4096.min(input.len() * 10).max(input.len()));
                }
            }
        }
    }
}
