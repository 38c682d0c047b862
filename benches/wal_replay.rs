//! Replay: how fast the flusher's reader turns WAL segments already in the page cache back
//! into events (the ceiling for replay and catch-up before MySQL is involved).
//!
//! Run: `cargo bench --bench wal_replay -- --warm-up-time 1 --measurement-time 5`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use psc::wal::reader::CoreWalReader;
use psc::wal::record::{encode, Context, Event};
use psc::wal::segment::segment_path;
use psc::wal::Position;

/// Two sealed segments and an open one: the reader crosses segment boundaries and uses both
/// its mmap (sealed) and buffered (open) paths.
const SEGMENTS: u32 = 3;
const RECORDS_PER_SEGMENT: u64 = 200_000;
/// Events handed over per `read` call, as the flusher asks for one batch at a time.
const BATCH: usize = 5000;

fn write_segments(dir: &std::path::Path) -> Position {
    let domains = ["piratka.biz", "example.com", "video.cdn.example.org", "a.b"];
    let mut bytes = Vec::new();
    let mut end = Position::default();
    for n in 1..=SEGMENTS {
        bytes.clear();
        for i in 0..RECORDS_PER_SEGMENT {
            let ev = Event {
                ts_ms: 1_763_923_170_123 + i,
                event: if i % 3 == 0 { "play" } else { "pause" },
                domain: domains[(i % 4) as usize],
                file_id: 100_000 + i,
            };
            encode(&ev, &Context::NONE, &mut bytes);
        }
        std::fs::write(segment_path(dir, n), &bytes).expect("write segment");
        end = Position::new(n, bytes.len() as u64);
    }
    end
}

fn bench_replay(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let until = write_segments(dir.path());
    let total = u64::from(SEGMENTS) * RECORDS_PER_SEGMENT;
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(total));
    group.sample_size(10);
    group.bench_function("read_decode_600k_events_in_5000_batches", |b| {
        b.iter(|| {
            let mut reader = CoreWalReader::new(dir.path());
            let mut at = Position::default();
            let mut seen = 0u64;
            while at < until {
                let out = reader.read(at, until, BATCH, |ev, _ctx, _raw, _end| {
                    seen += black_box(ev.file_id) & 1;
                });
                assert!(out.stop.is_none(), "clean segments read without a stop");
                at = out.reached;
            }
            black_box(seen)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_replay);
criterion_main!(benches);
