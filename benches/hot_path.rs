//! Hot path without IO: request bytes → parsed head → validated event → WAL record bytes.
//! Each group reports time per request; the pipelined group parses 16 requests from one
//! buffer, as a connection does after a read returns many pipelined requests. The `_geoip`
//! case is the default GET with `enrich.geoip_db` on (the test database of
//! `scripts/geoip-test-db.sh`, a lookup per request of a public client IP); it is skipped,
//! with a note, where that script cannot fetch the database.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use psc::config::{Config, HttpConfig};
use psc::http::dialect::{client_context, DialectScratch, Dialects};
use psc::http::request::{parse, Limits, Parsed};
use psc::ingest::geoip::GeoIp;
use psc::ingest::{parse_beacon, QueryScratch, Rules};
use psc::wal::record::{encode, Context};

const REQUEST: &[u8] = b"GET /log?event=play&domain=piratka.biz&file_id=109454 HTTP/1.1\r\n\
Host: localhost:34201\r\nUser-Agent: wrk\r\n\r\n";
const PIPELINED: usize = 16;
/// The output buffer is cleared every this many records, like a WAL tick buffer.
const RECORDS_PER_FLUSH: usize = 64;
const TS_MS: u64 = 1_700_000_000_000;

/// Parses, validates and encodes the request at the start of `buf`; returns its head length.
fn handle_one(
    buf: &[u8],
    limits: &Limits,
    allow: &Rules,
    scratch: &mut QueryScratch,
    out: &mut Vec<u8>,
) -> usize {
    let Parsed::Complete(req) = parse(buf, limits) else {
        panic!("benchmark request must parse");
    };
    let event = parse_beacon(req.query, TS_MS, allow, scratch).expect("valid beacon").event;
    encode(&event, &Context::NONE, out);
    req.head_len
}

fn bench_hot_path(c: &mut Criterion) {
    let limits = Limits::from(&HttpConfig::default());
    let allow = Rules::default();
    let mut scratch = QueryScratch::new();
    let mut out = Vec::with_capacity(RECORDS_PER_FLUSH * 128);

    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse", |b| {
        b.iter(|| match parse(black_box(REQUEST), &limits) {
            Parsed::Complete(req) => req.head_len,
            _ => panic!("benchmark request must parse"),
        })
    });
    group.bench_function("parse_validate", |b| {
        b.iter(|| {
            let Parsed::Complete(req) = parse(black_box(REQUEST), &limits) else {
                panic!("benchmark request must parse");
            };
            let event = parse_beacon(req.query, TS_MS, &allow, &mut scratch).expect("valid").event;
            event.file_id
        })
    });
    let mut records = 0;
    group.bench_function("parse_validate_encode", |b| {
        b.iter(|| {
            if records % RECORDS_PER_FLUSH == 0 {
                out.clear();
            }
            records += 1;
            handle_one(black_box(REQUEST), &limits, &allow, &mut scratch, &mut out)
        })
    });

    // What `/log` does since the dialects: the default config stores IP and User-Agent too.
    let dialects = Dialects::from_config(&Config::default());
    let mut dialect = DialectScratch::new("127.0.0.1".parse().expect("ip"));
    group.bench_function("parse_validate_encode_context", |b| {
        b.iter(|| {
            if records % RECORDS_PER_FLUSH == 0 {
                out.clear();
            }
            records += 1;
            let Parsed::Complete(req) = parse(black_box(REQUEST), &limits) else {
                panic!("benchmark request must parse");
            };
            let event = parse_beacon(req.query, TS_MS, &allow, &mut scratch).expect("valid").event;
            let context = client_context(&req, &dialects, &mut dialect);
            encode(&event, &context, &mut out);
            req.head_len
        })
    });

    if let Some(geo) = geoip() {
        let mut config = Config::default();
        config.enrich.opened = Some(std::sync::Arc::new(geo));
        let dialects = Dialects::from_config(&config);
        let mut dialect = DialectScratch::new("8.8.8.8".parse().expect("ip"));
        group.bench_function("parse_validate_encode_context_geoip", |b| {
            b.iter(|| {
                if records % RECORDS_PER_FLUSH == 0 {
                    out.clear();
                }
                records += 1;
                let Parsed::Complete(req) = parse(black_box(REQUEST), &limits) else {
                    panic!("benchmark request must parse");
                };
                let event = parse_beacon(req.query, TS_MS, &allow, &mut scratch).expect("valid").event;
                let context = client_context(&req, &dialects, &mut dialect);
                assert!(context.country.is_some(), "8.8.8.8 has a country");
                encode(&event, &context, &mut out);
                req.head_len
            })
        });
    }

    let pipelined = REQUEST.repeat(PIPELINED);
    group.throughput(Throughput::Elements(PIPELINED as u64));
    group.bench_function("pipelined_16_parse_validate_encode", |b| {
        b.iter(|| {
            let mut buf = black_box(pipelined.as_slice());
            while !buf.is_empty() {
                if records % RECORDS_PER_FLUSH == 0 {
                    out.clear();
                }
                records += 1;
                let head_len = handle_one(buf, &limits, &allow, &mut scratch, &mut out);
                buf = &buf[head_len..];
            }
        })
    });
    group.finish();
}

/// The test country database, or `None` (said on stderr) where it cannot be had.
fn geoip() -> Option<GeoIp> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/geoip-test-db.sh");
    let path = match std::process::Command::new(script).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        other => {
            eprintln!("hot_path: no GeoIP test database ({other:?}); skipping the _geoip case");
            return None;
        }
    };
    GeoIp::open(std::path::Path::new(&path))
        .map_err(|e| eprintln!("hot_path: {e}; skipping the _geoip case"))
        .ok()
}

criterion_group!(benches, bench_hot_path);
criterion_main!(benches);
