//! WAL hot-path costs: encoding one record into a reused buffer, writing a 64-record tick
//! buffer with one `write_all`, and decoding (scanning) segment bytes.
//!
//! Run: `cargo bench --bench wal_append -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::io::Write;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use psc::wal::record::{encode, scan, Context, Event};

const TICK_RECORDS: u64 = 64;
const SCAN_BYTES: usize = 4 * 1024 * 1024;
/// The tick file is rewound when it reaches this size so the bench does not fill the disk.
const TICK_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

const BROWSER_UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                          (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

fn typical(file_id: u64) -> Event<'static> {
    Event { ts_ms: 1_763_923_170_123, event: "play", domain: "piratka.biz", file_id }
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    let mut buf = Vec::with_capacity(256);
    group.bench_function("one_record_reused_vec", |b| {
        b.iter(|| {
            buf.clear();
            encode(black_box(&typical(109_454)), &Context::NONE, &mut buf);
            black_box(buf.len())
        })
    });
    // What a browser's beacon stores with the default config: IP, a desktop Chrome
    // User-Agent (escaped as a JSON string) and the Referer's host.
    let browser = Context {
        ip: Some("203.0.113.7"),
        ua: Some(BROWSER_UA),
        referer_host: Some("piratka.biz"),
        ..Context::NONE
    };
    group.bench_function("one_record_browser_context", |b| {
        b.iter(|| {
            buf.clear();
            encode(black_box(&typical(109_454)), black_box(&browser), &mut buf);
            black_box(buf.len())
        })
    });
    group.finish();
}

fn bench_tick_write(c: &mut Criterion) {
    let mut group = c.benchmark_group("tick_write");
    group.throughput(Throughput::Elements(TICK_RECORDS));
    let mut file = tempfile::tempfile().expect("temp file");
    let mut written = 0u64;
    let mut tick = Vec::with_capacity(64 * 1024);
    group.bench_function("encode_64_and_write_all", |b| {
        b.iter(|| {
            tick.clear();
            for i in 0..TICK_RECORDS {
                encode(&typical(100_000 + i), &Context::NONE, &mut tick);
            }
            file.write_all(&tick).expect("write");
            written += tick.len() as u64;
            if written >= TICK_FILE_BYTES_MAX {
                file.set_len(0).expect("truncate");
                std::io::Seek::rewind(&mut file).expect("rewind");
                written = 0;
            }
        })
    });
    group.finish();
}

fn bench_scan(c: &mut Criterion) {
    let mut segment = Vec::with_capacity(SCAN_BYTES + 256);
    let mut id = 1;
    while segment.len() < SCAN_BYTES {
        encode(&typical(id), &Context::NONE, &mut segment);
        id += 1;
    }
    let mut group = c.benchmark_group("scan");
    group.throughput(Throughput::Bytes(segment.len() as u64));
    group.bench_function("4MiB_of_records", |b| {
        b.iter(|| {
            let s = scan(black_box(&segment));
            assert!(s.is_clean());
            s.records
        })
    });
    group.finish();
}

criterion_group!(benches, bench_encode, bench_tick_write, bench_scan);
criterion_main!(benches);
