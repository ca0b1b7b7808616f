//! Peak extra memory of splitting and validating a 1,000,000-recipient body (issue 6,
//! target 1: at most 1.2x the body), beside the naive `serde_json::Value` way.
//!
//! `cargo run --release --example split_mem` measures every combination, each in a fresh
//! child process (so one measurement's freed heap cannot hide the next one's growth),
//! `REPEATS` times (default 3), and prints one line per combination:
//! `split_mem shape=strings way=sluice body_mb=15.0 extra_mb_median=… min=… max=… ratio_median=…`.
//!
//! One measurement (`split_mem WAY SHAPE`): build the body into one buffer sized up
//! front, reset the kernel's peak-RSS mark (`/proc/self/clear_refs`, "5"), note VmHWM,
//! split, note VmHWM again; the difference is the peak extra memory of the split. Ways:
//! - `sluice`: `split::scan` with the recipient check (what the accept path holds: the
//!   layout, 16 bytes per recipient; parts are cut later from the stored body);
//! - `sluice-parts`: the same, then each 200,000-recipient part written one at a time;
//! - `naive`: `Value` parse, check, serialise each part.

use std::process::Command;

#[path = "../benches/support/mod.rs"]
mod support;
use support::{body, naive_split, sluice_split, Shape, PART_MAX, RECIPIENTS};

const WAYS: [&str; 3] = ["sluice", "sluice-parts", "naive"];

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Resets VmHWM to the current RSS (Linux 4.0+).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("writing /proc/self/clear_refs");
}

/// One measurement in this process: (body bytes, peak extra bytes).
fn measure(way: &str, shape: Shape) -> (usize, u64) {
    let body = body(shape, RECIPIENTS);
    reset_peak();
    let before = status_kib("VmHWM:");
    let outcome = match way {
        "sluice" => sluice_split(&body, PART_MAX, None),
        "sluice-parts" => sluice_split(&body, PART_MAX, Some(&mut |part| drop(part))),
        "naive" => naive_split(&body, PART_MAX, &mut |part| drop(part)),
        other => panic!("unknown way {other:?}; one of {WAYS:?}"),
    };
    let after = status_kib("VmHWM:");
    assert_eq!(outcome.recipients, RECIPIENTS);
    (body.len(), (after - before) * 1024)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [way, shape] = args.as_slice() {
        let shape = match shape.as_str() {
            "strings" => Shape::Strings,
            "objects" => Shape::Objects,
            other => panic!("unknown shape {other:?}"),
        };
        let (body, extra) = measure(way, shape);
        println!("{body} {extra}");
        return;
    }
    let repeats: usize = std::env::var("REPEATS").map_or(3, |r| r.parse().expect("REPEATS"));
    let me = std::env::current_exe().expect("own path");
    for shape in ["strings", "objects"] {
        for way in WAYS {
            let mut extras = Vec::new();
            let mut body = 0f64;
            for _ in 0..repeats {
                let out = Command::new(&me)
                    .args([way, shape])
                    .output()
                    .expect("run a measurement");
                assert!(out.status.success(), "{way} {shape} failed");
                let text = String::from_utf8_lossy(&out.stdout);
                let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().unwrap());
                body = fields.next().expect("body size");
                extras.push(fields.next().expect("extra bytes"));
            }
            extras.sort_by(f64::total_cmp);
            let mb = |b: f64| b / 1e6;
            let median = extras[extras.len() / 2];
            println!(
                "split_mem shape={shape} way={way} body_mb={:.1} extra_mb_median={:.1} min={:.1} max={:.1} ratio_median={:.2}",
                mb(body),
                mb(median),
                mb(extras[0]),
                mb(extras[extras.len() - 1]),
                median / body
            );
        }
    }
}
