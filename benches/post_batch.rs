//! `POST /log` JSON batch bodies: parse + validate a KB-size body into a batch, with
//! simd-json and with serde_json. Throughput is in events, so criterion prints events/s.
//! The production parser (`JsonParser::Simd` in `http::dialect`) is the faster one here.
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use psc::ingest::body::{parse_body, BatchScratch, BodyKind, BodyRules, JsonParser};
use psc::ingest::Rules;

/// A batch as a player sends it: events with a few extra keys the collector ignores.
fn body(events: usize) -> Vec<u8> {
    let items: Vec<String> = (0..events)
        .map(|i| {
            format!(
                r#"{{"event":"{}","domain":"site{}.example.org","file_id":{},"position":{}.5,"quality":"720p","session":"a8f3c2d1e4b5{i:06}"}}"#,
                ["play", "pause", "progress", "end"][i % 4],
                i % 7,
                100_000 + i,
                i * 10,
            )
        })
        .collect();
    format!("[{}]", items.join(",")).into_bytes()
}

fn bench_post_batch(c: &mut Criterion) {
    let allow = Rules::default();
    let mut group = c.benchmark_group("post_batch");
    for events in [10usize, 100] {
        let original = body(events);
        group.throughput(Throughput::Elements(events as u64));
        for (name, parser) in [("simd_json", JsonParser::Simd), ("serde_json", JsonParser::Serde)] {
            let rules = BodyRules { rules: &allow, max_events: 100, parser };
            let mut out = BatchScratch::default();
            let mut buf = original.clone();
            let id = BenchmarkId::new(name, format!("{events}_events_{}B", original.len()));
            group.bench_function(id, |b| {
                b.iter(|| {
                    // simd-json parses in place: every iteration starts from the pristine body.
                    buf.copy_from_slice(&original);
                    parse_body(BodyKind::Json, black_box(&mut buf), &rules, &mut out).expect("valid batch");
                    out.len()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_post_batch);
criterion_main!(benches);
