//! Cost of turning a decoded batch into what MySQL reads: 5000 WAL records decoded into a
//! `sink::Batch`, then the multi-row INSERT text (`psc::mysql::sql`) or the LOAD DATA TSV
//! (`psc::mysql::load_data`), domain ids already resolved; and the per-batch rollup
//! aggregation (`psc::rollup`). Criterion reports the time per batch; divide by 5000 for ns/row.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

use bytes::BytesMut;
use psc::mysql::load_data::build_tsv;
use psc::mysql::sql::{build_event_inserts, SqlBuffer};
use psc::rollup::{aggregate, Bucket, Dimension, RollupConfig};
use psc::sink::Batch;
use psc::wal::identity::LaneId;
use psc::wal::record::{decode, encode, Context, Event};
use psc::wal::Position;

const ROWS: usize = 5000;

fn wal_bytes() -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..ROWS as u64 {
        let domain = format!("site{}.example.org", i % 50);
        let ev = Event { ts_ms: 1_763_923_170_000 + i, event: "play", domain: &domain, file_id: 100_000 + i };
        encode(&ev, &Context::NONE, &mut bytes);
    }
    bytes
}

fn fill(batch: &mut Batch, bytes: &[u8]) {
    batch.reset(Position::new(1, 0));
    let mut offset = 0;
    while offset < bytes.len() {
        let (ev, context, len) = decode(&bytes[offset..]).expect("valid record");
        let line = &bytes[offset..offset + len];
        offset += len;
        batch.push(&ev, &context, line, Position::new(1, offset as u64));
    }
}

fn insert_build(c: &mut Criterion) {
    let bytes = wal_bytes();
    let mut batch = Batch::new(LaneId { core: 0, incarnation: 1 }, 0, Position::new(1, 0));
    let mut sql = SqlBuffer::default();
    let ids: Vec<u32> = (0..ROWS as u32).map(|i| i % 50 + 1).collect();
    let mut group = c.benchmark_group("insert_build");
    group.throughput(Throughput::Elements(ROWS as u64));
    fill(&mut batch, &bytes);
    group.bench_function("build_5000_rows", |b| {
        b.iter(|| {
            sql.clear();
            build_event_inserts(black_box(&batch), &ids, 8 << 20, &mut sql).expect("rows fit");
            black_box(sql.statement_count())
        })
    });
    let mut tsv = BytesMut::new();
    group.bench_function("build_tsv_5000_rows", |b| {
        b.iter(|| {
            tsv.clear();
            build_tsv(black_box(&batch), &ids, &mut tsv);
            black_box(tsv.len())
        })
    });
    let rollup = RollupConfig {
        name: "plays".into(),
        bucket: Bucket::Minute,
        dimensions: vec![Dimension::Event, Dimension::Domain, Dimension::FileId],
    };
    group.bench_function("rollup_aggregate_5000_rows", |b| {
        b.iter(|| black_box(aggregate(&rollup, black_box(&batch), 0..batch.len()).len()))
    });
    group.bench_function("decode_and_build_5000_rows", |b| {
        b.iter(|| {
            fill(&mut batch, black_box(&bytes));
            sql.clear();
            build_event_inserts(&batch, &ids, 8 << 20, &mut sql).expect("rows fit");
            black_box(sql.statement_count())
        })
    });
    group.finish();
}

criterion_group!(benches, insert_build);
criterion_main!(benches);
