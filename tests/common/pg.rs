//! A real PostgreSQL server for tests: Debian's `postgresql` binaries (`initdb`,
//! `postgres`), a fresh cluster in a temporary directory on a free loopback port, trust
//! authentication for a `sluice` superuser; stopped (`-m immediate`) and removed when
//! dropped. When the tests run as root (CI), the server runs as the `postgres` user, since
//! PostgreSQL refuses to run as root.
//!
//! [`PgCluster::database`] creates a fresh database for one test; [`PgCluster::kill`] and
//! [`PgCluster::restart`] take the server away and bring it back, for outage tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A running PostgreSQL cluster; stopped and removed when dropped.
pub struct PgCluster {
    child: Option<Child>,
    pub addr: SocketAddr,
    bin: PathBuf,
    dir: tempfile::TempDir,
    databases: AtomicU32,
}

impl PgCluster {
    /// Creates a cluster with `initdb` and starts it; waits (bounded) until it takes
    /// connections. Fails the test when PostgreSQL is not installed.
    pub fn start() -> PgCluster {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("a temporary directory");
        if is_root() {
            chown_postgres(dir.path());
        }
        let data = dir.path().join("data");
        let out = as_postgres(&bin.join("initdb"))
            .args([
                "-U",
                "sluice",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let addr = free_port();
        let mut cluster = PgCluster {
            child: None,
            addr,
            bin,
            dir,
            databases: AtomicU32::new(0),
        };
        cluster.spawn();
        cluster
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .expect("a log file");
        if is_root() {
            chown_postgres(&self.dir.path().join("postgres.log"));
        }
        use std::os::unix::process::CommandExt as _;
        let child = as_postgres(&self.bin.join("postgres"))
            .process_group(0)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.addr.port().to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            // fsync off: a killed server loses nothing (the OS keeps its writes); only an
            // OS crash would, which a test never sees.
            .args(["-c", "max_connections=200", "-c", "fsync=off"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("postgres exited ({status}):\n{}", self.log());
            }
            // Ready when *this* postmaster says so in its pid file (line 8), not when
            // something answers on the port: that could be another test's server.
            let pid_file = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"));
            let ready =
                pid_file.is_ok_and(|f| f.lines().nth(7).is_some_and(|l| l.trim() == "ready"));
            if ready {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "postgres not ready within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The URL of database `name` (no TLS: loopback).
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://sluice@{}:{}/{name}?sslmode=disable",
            self.addr.ip(),
            self.addr.port()
        )
    }

    /// A fresh, empty database; its URL.
    pub fn database(&self) -> String {
        let name = format!("t{}", self.databases.fetch_add(1, Ordering::Relaxed));
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.addr.port().to_string()])
            .args(["-U", "sluice", &name])
            .output()
            .expect("createdb runs");
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// Kills the server at once: SIGKILL to the postmaster and every backend, so open
    /// connections break too: an outage of the database.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Backends are in sessions of their own (PostgreSQL calls setsid), so the
            // process group does not reach them: stop the postmaster (it cannot fork any
            // more), kill its children, then it.
            let pid = child.id();
            signal("-STOP", pid);
            let children = children_of(pid);
            for c in &children {
                signal("-KILL", *c);
            }
            signal("-KILL", pid);
            let _ = child.wait();
            let start = Instant::now();
            while children.iter().any(|c| is_alive(*c)) {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "postgres backends still alive"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let start = Instant::now();
        while std::net::TcpStream::connect(self.addr).is_ok() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "postgres still listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.dir.path().join("data/postmaster.pid"));
    }

    /// Starts the server again on the same port and data (after [`PgCluster::kill`]).
    pub fn restart(&mut self) {
        self.spawn();
    }
}

fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([sig, "--", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// The processes whose parent is `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| stat_field(*p, 1).as_deref() == Some(&pid.to_string()))
        .collect()
}

/// Whether `pid` runs (a zombie or a vanished process does not).
fn is_alive(pid: u32) -> bool {
    stat_field(pid, 0).is_some_and(|state| state != "Z" && state != "X")
}

/// Field `n` after the command name in `/proc/PID/stat` (0: state, 1: parent pid).
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n).map(str::to_owned)
}

/// A loopback port no other cluster of this test process holds: the OS hands out a free
/// one, and the ports given to clusters are remembered, so that a cluster that is down for
/// an outage test keeps its port.
fn free_port() -> SocketAddr {
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        if !taken.contains(&addr.port()) {
            taken.push(addr.port());
            return addr;
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` (Debian's layout), or the directory of
/// `initdb` on PATH.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let found = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match found.as_deref().and_then(Path::parent) {
        Some(dir) => dir.to_path_buf(),
        None => panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb). `.ci/run` \
             installs it (`apt-get install -y --no-install-recommends postgresql`)."
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A command that runs `program` as the `postgres` user when we are root (with `setpriv`,
/// which execs: the child's pid is the server's), or as ourselves otherwise.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ]);
        c.arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn chown_postgres(path: &Path) {
    let ok = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "chown postgres {}", path.display());
}
