//! Throwaway throughput check for `sluice::split` (not a test, not a benchmark harness).
//!
//! Run with `cargo run --release --example split_speed [strings|objects]`. Builds two bodies of 1,000,000
//! recipients each (plain strings, and objects with variables), then times `scan` over
//! each (best of several runs), the same single pass with the recipients validation of
//! `sluice::validate` riding on it (`scan_with` + `RecipientsCheck`), and `write_part` for
//! 200,000-recipient parts, printing MB/s and the process's peak resident memory.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sluice::split::{chunks, part_len, scan, scan_with, write_part};
use sluice::validate::recipients::{RecipientsCheck, Verdict};
use sluice::validate::InvalidRecipients;

const N: usize = 1_000_000;
const RUNS: usize = 7;

fn strings_body() -> Vec<u8> {
    let mut body = br#"{"sender":"Sluice","text":"Hello from the proxy","recipients":["#.to_vec();
    for i in 0..N {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(format!("\"+3897{:07}\"", i).as_bytes());
    }
    body.extend_from_slice(br#"],"channel":"sms"}"#);
    body
}

fn objects_body() -> Vec<u8> {
    let mut body = br#"{"sender":"Sluice","text":"Hello {{name}}","recipients":["#.to_vec();
    for i in 0..N {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(
            format!(
                r#"{{"phoneNumber":"3897{:07}","variables":{{"name":"Ana {}"}}}}"#,
                i,
                i % 97
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(br#"],"channel":"viber"}"#);
    body
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mbps(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / 1e6 / time.as_secs_f64()
}

fn measure(name: &str, body: &[u8]) {
    // Peak memory of one scan first, on its own, then the timing runs.
    let rss_before = peak_rss_kib().unwrap_or(0);
    let layout = scan(body, "/recipients", |_, _| {}).expect("scan");
    let rss_after = peak_rss_kib().unwrap_or(0);
    assert_eq!(layout.items.len(), N);
    let mut best_scan = Duration::MAX;
    for _ in 0..RUNS {
        let mut visited = 0usize;
        let start = Instant::now();
        let l = scan(black_box(body), "/recipients", |_, raw| {
            visited += raw.get().len();
        })
        .expect("scan");
        best_scan = best_scan.min(start.elapsed());
        black_box((visited, l));
    }

    // The same pass with every recipient validated (all are valid: the common case).
    let mut best_validated = Duration::MAX;
    for _ in 0..RUNS {
        let mut check = RecipientsCheck::new(InvalidRecipients::Reject);
        let start = Instant::now();
        let l = scan_with(black_box(body), "/recipients", &mut check).expect("scan");
        let verdict = check.verdict(InvalidRecipients::Reject, l.items.len());
        best_validated = best_validated.min(start.elapsed());
        assert_eq!(verdict, Verdict::SendAll);
        black_box(l);
    }

    let mut best_write = Duration::MAX;
    let mut written = 0;
    let mut out = Vec::new();
    for _ in 0..RUNS {
        written = 0;
        let start = Instant::now();
        for range in chunks(layout.items.len(), 200_000) {
            out.clear();
            out.reserve(part_len(body, &layout, range.clone()));
            write_part(body, &layout, range, &mut out);
            written += black_box(&out).len();
        }
        best_write = best_write.min(start.elapsed());
    }
    println!(
        "{name}: body {:.1} MB; scan {:.1} ms = {:.0} MB/s; scan + validation {:.1} ms = {:.0} MB/s \
         (+{:.0}%); write 5 parts {:.1} ms = {:.0} MB/s written; \
         one scan's extra peak memory {:.1} MB = {:.2}x body",
        body.len() as f64 / 1e6,
        best_scan.as_secs_f64() * 1e3,
        mbps(body.len(), best_scan),
        best_validated.as_secs_f64() * 1e3,
        mbps(body.len(), best_validated),
        (best_validated.as_secs_f64() / best_scan.as_secs_f64() - 1.0) * 100.0,
        best_write.as_secs_f64() * 1e3,
        mbps(written, best_write),
        (rss_after - rss_before) as f64 / 1024.0,
        (rss_after - rss_before) as f64 * 1024.0 / body.len() as f64,
    );
}

fn main() {
    // One body per process run keeps the peak-memory figure clean: `objects` or `strings`.
    let which = std::env::args().nth(1).unwrap_or_else(|| "both".into());
    if which != "objects" {
        measure("1M string recipients", &strings_body());
    }
    if which != "strings" {
        measure("1M object recipients", &objects_body());
    }
}
