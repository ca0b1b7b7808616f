//! Split and validate a 1,000,000-recipient bulk body (issue 6, target 1), in MB/s of
//! the body, beside a naive `serde_json::Value` parse-and-reserialise in the same run.
//!
//! `cargo bench --bench split` (bench/run.sh runs it and summarises criterion's samples).
//! For each body shape (plain strings; objects with `variables`) four functions run:
//! - `sluice_scan`: `split::scan` alone (no recipient check), the splitter's own cost;
//! - `sluice_scan_validate`: what sluice's accept path does with a bulk body: one
//!   `split::scan` pass, the recipient check as its visitor, the part boundaries known;
//! - `sluice_split_write_parts`: the same plus writing every part of 200,000 recipients
//!   (the provider's maximum) as its own request body;
//! - `naive_value_split`: parse into a `Value`, check every recipient, serialise each part.
//!
//! Peak extra memory is measured apart, per process, by `examples/split_mem.rs`.
//! Before timing, the bench checks that sluice and the naive way cut the same parts.
//! Each function runs in a fresh heap state only if the groups run in separate processes
//! (bench/run.sh does: `-- split_1m_strings`, then `-- split_1m_objects`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

mod support;
use sluice::split::scan;
use support::{
    body, check_same_parts, naive_split, sluice_split, Shape, PART_MAX, POINTER, RECIPIENTS,
};

fn split(c: &mut Criterion) {
    for shape in [Shape::Strings, Shape::Objects] {
        // The check runs on a small body: a Value tree of the full one would leave a
        // fragmented heap behind and slow down whatever is measured after it.
        check_same_parts(&body(shape, 20_000), 5_000);
        let body = body(shape, RECIPIENTS);
        let mut group = c.benchmark_group(format!("split_1m_{}", shape.name()));
        group
            .throughput(Throughput::BytesDecimal(body.len() as u64))
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));
        group.bench_function("sluice_scan", |b| {
            b.iter(|| {
                scan(black_box(&body), POINTER, |_, raw| {
                    black_box(raw);
                })
            })
        });
        group.bench_function("sluice_scan_validate", |b| {
            b.iter(|| sluice_split(black_box(&body), PART_MAX, None))
        });
        group.bench_function("sluice_split_write_parts", |b| {
            b.iter(|| {
                sluice_split(
                    black_box(&body),
                    PART_MAX,
                    Some(&mut |part| drop(black_box(part))),
                )
            })
        });
        group.bench_function("naive_value_split", |b| {
            b.iter(|| {
                naive_split(black_box(&body), PART_MAX, &mut |part| {
                    drop(black_box(part))
                })
            })
        });
        group.finish();
    }
}

criterion_group!(benches, split);
criterion_main!(benches);
