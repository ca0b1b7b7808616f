//! The real `sluice` binary as a child process, for the tests that need a process: crash
//! and restart, signals, resource limits. It is started with a config file, its JSON log
//! lines are kept (and its listening addresses read from them), and it can be signalled.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A running `sluice serve`.
pub struct Sluice {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

/// Writes a config file in `dir` for a proxy on free loopback ports in front of
/// `upstream`, its data in `dir/data`, with `extra` TOML appended (sections included).
pub fn config(dir: &Path, upstream: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
             [upstream]\nurl = \"{upstream}\"\n{extra}",
            dir.join("data"),
        ),
    )
    .expect("the config is written");
    path
}

impl Sluice {
    /// Starts `sluice serve --config config` (behind `prefix`, e.g. `prlimit …`, if any)
    /// and waits for its "sluice listening" line.
    pub fn start(config: &Path, prefix: &[&str]) -> Sluice {
        let exe = env!("CARGO_BIN_EXE_sluice");
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = command
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("SLUICE_API_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let keep = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) {
                    if log["message"] == "sluice listening" {
                        let _ = tx.send((log["addr"].clone(), log["admin_addr"].clone()));
                    }
                }
                keep.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        let keep = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        let (addr, admin) = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let logs = lines
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .join("\n");
                panic!("sluice did not start listening:\n{logs}")
            });
        let parse = |v: serde_json::Value| {
            v.as_str()
                .expect("an address field")
                .parse()
                .expect("an address")
        };
        Sluice {
            child,
            addr: parse(addr),
            admin: parse(admin),
            lines,
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`, `KILL`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < within,
                "sluice did not exit within {within:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything it has written so far, one line each.
    pub fn logs(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
