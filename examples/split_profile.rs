//! One split of a bulk body, alone in a process, for a profiler to look at: the same
//! bodies and the same work as `benches/split.rs`, without criterion around them.
//!
//! ```sh
//! cargo build --release --example split_profile
//! # instructions, by function, of the split alone (building the body is not counted):
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='split_profile::run' \
//!     target/release/examples/split_profile objects validate
//! callgrind_annotate --inclusive=yes callgrind.out.<pid>
//! # or samples of where the time goes, over many runs:
//! perf record -g target/release/examples/split_profile strings validate 1000000 50
//! ```
//!
//! Arguments: `strings|objects` (the body shape), `scan|validate` (default `validate`:
//! `split::scan` with sluice's recipient check as its visitor, what the accept path runs;
//! `scan`: the splitter alone), the number of recipients (default 1,000,000) and how many
//! times to split the body (default 1).

use std::hint::black_box;

#[path = "../benches/support/mod.rs"]
mod support;
use support::{body, sluice_split, Shape, PART_MAX, POINTER, RECIPIENTS};

/// The measured work: one split of `body`. Kept out of line so that a profiler can
/// collect exactly this function and what it calls.
#[inline(never)]
fn run(body: &[u8], way: &str) -> usize {
    match way {
        "scan" => sluice::split::scan(body, POINTER, |_, element| {
            black_box(element);
        })
        .expect("the body splits")
        .items
        .len(),
        "validate" => sluice_split(body, PART_MAX, None).recipients,
        other => panic!("unknown way {other:?}: scan or validate"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shape = match args.first().map(String::as_str) {
        Some("strings") | None => Shape::Strings,
        Some("objects") => Shape::Objects,
        Some(other) => panic!("unknown shape {other:?}: strings or objects"),
    };
    let way = args.get(1).map_or("validate", String::as_str);
    let n = args
        .get(2)
        .map_or(RECIPIENTS, |n| n.parse().expect("a count"));
    let repeats: usize = args.get(3).map_or(1, |r| r.parse().expect("a count"));
    let body = body(shape, n);
    for _ in 0..repeats {
        assert_eq!(run(black_box(&body), way), n);
    }
    println!(
        "split_profile shape={} way={way} recipients={n} body_bytes={} repeats={repeats}",
        shape.name(),
        body.len()
    );
}
