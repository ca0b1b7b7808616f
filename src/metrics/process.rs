//! The standard `process_*` metrics (Prometheus's client conventions), read from `/proc`
//! at scrape time: CPU seconds with their fraction (the clock-tick resolution of `/proc`,
//! 10 ms), memory, descriptors, threads and the start time. Linux only; elsewhere they
//! stay 0.

use prometheus::{Counter, Gauge, IntGauge, Registry};

/// `/proc` reports CPU time in USER_HZ ticks, fixed at 100 per second on Linux.
const TICKS_PER_SEC: f64 = 100.0;

/// The process collectors, updated by [`Process::refresh`].
pub struct Process {
    cpu: Counter,
    resident: IntGauge,
    virtual_memory: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: Gauge,
}

/// What `/proc/self/stat` says, in base units.
#[derive(Debug, Default, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    threads: i64,
    start_ticks: u64,
    virtual_bytes: i64,
    resident_pages: i64,
}

// === impl Process ===

impl Process {
    pub fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str| {
            let c = Counter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let start_time = Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(start_time.clone()))
            .expect("unique metric");
        let p = Self {
            cpu: counter(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            ),
            resident: gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            virtual_memory: gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            open_fds: gauge("process_open_fds", "Number of open file descriptors."),
            max_fds: gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            ),
            threads: gauge("process_threads", "Number of OS threads in the process."),
            start_time,
        };
        p.refresh();
        p
    }

    /// Reads `/proc` again; what cannot be read keeps its last value.
    pub fn refresh(&self) {
        if let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_stat(&t))
        {
            let delta = stat.cpu_seconds - self.cpu.get();
            if delta > 0.0 {
                self.cpu.inc_by(delta);
            }
            self.threads.set(stat.threads);
            self.virtual_memory.set(stat.virtual_bytes);
            self.resident.set(stat.resident_pages * 4096);
            if let Some(boot) = boot_time() {
                self.start_time
                    .set(boot + stat.start_ticks as f64 / TICKS_PER_SEC);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as i64);
        }
        if let Some(max) = max_fds() {
            self.max_fds.set(max);
        }
    }
}

/// Reads the fields of `/proc/self/stat` (after the command name, which may hold spaces).
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields counted from `state` (field 3 of proc(5)) as index 0.
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(Stat {
        cpu_seconds: (num(11)? + num(12)?) as f64 / TICKS_PER_SEC,
        threads: num(17)? as i64,
        start_ticks: num(19)?,
        virtual_bytes: num(20)? as i64,
        resident_pages: num(21)? as i64,
    })
}

/// The system's boot time (unix seconds), from `/proc/stat`.
fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// The soft open-file limit, from `/proc/self/limits`.
fn max_fds() -> Option<i64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stat_line_reads_with_spaces_in_the_name_and_fractional_cpu() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    123 45 0 0 20 0 7 0 9876 123456789 2048 18446744073709551615";
        let stat = parse_stat(line).expect("parsed");
        assert_eq!(
            stat,
            Stat {
                cpu_seconds: 1.68,
                threads: 7,
                start_ticks: 9876,
                virtual_bytes: 123_456_789,
                resident_pages: 2048,
            }
        );
    }

    #[test]
    fn the_live_figures_are_plausible() {
        let registry = Registry::new();
        let p = Process::register(&registry);
        p.refresh();
        assert!(p.threads.get() >= 1);
        assert!(p.resident.get() > 0);
        assert!(p.open_fds.get() > 0);
        assert!(p.start_time.get() > 1_600_000_000.0);
    }
}
