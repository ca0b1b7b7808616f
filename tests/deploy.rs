//! The deployment files in `deploy/`, checked by the tools that read them, with no network
//! and no container engine: `promtool check config` (compose's Prometheus), `systemd-analyze
//! verify` (the unit), `sluice check-config` (the unit's config), and every YAML file
//! parsed by python3's PyYAML, then the Kubernetes manifest's probes and grace period.
//!
//! `promtool`, `systemd-analyze` and `python3` with PyYAML must be on `PATH` (`.ci/run`
//! installs them: Debian's `prometheus`, `systemd`, `python3-yaml`). A test that needs one
//! fails without it rather than skipping.
//!
//! The image itself is checked by `deploy/test-image.sh` (root, buildah, a static release
//! build), not here.

use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn path(relative: &str) -> PathBuf {
    Path::new(ROOT).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(path(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// Runs a tool, failing the test with how to install it when it is missing.
fn run(command: &mut Command, install: &str) -> Output {
    let name = command.get_program().to_string_lossy().into_owned();
    match command.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{name} is not installed; {install}")
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Every document of a YAML file, as JSON, parsed by PyYAML's `safe_load_all`.
fn yaml_docs(relative: &str) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
                  json.dump(docs, sys.stdout)";
    let out = run(
        Command::new("python3")
            .args(["-c", script])
            .arg(path(relative)),
        "apt-get install -y --no-install-recommends python3 python3-yaml (or pip install pyyaml)",
    );
    assert!(
        out.status.success(),
        "{relative} is not valid YAML:\n{}",
        text(&out)
    );
    match serde_json::from_slice(&out.stdout).expect("python3 printed JSON") {
        Value::Array(docs) => docs,
        other => panic!("not a list of documents: {other}"),
    }
}

/// `server.shutdown_grace_ms` of a sluice TOML config (the default if it is not set).
fn shutdown_grace_ms(toml_text: &str) -> u64 {
    let config: toml::Table = toml::from_str(toml_text).expect("TOML");
    config
        .get("server")
        .and_then(|s| s.get("shutdown_grace_ms"))
        .map(|v| v.as_integer().expect("an integer") as u64)
        .unwrap_or(DEFAULT_GRACE_MS)
}

/// `server.shutdown_grace_ms` when no config sets it.
const DEFAULT_GRACE_MS: u64 = 10_000;

// === YAML ===

#[test]
fn every_yaml_file_parses() {
    for file in [
        "deploy/kubernetes/sidecar.yaml",
        "deploy/kubernetes/cluster.yaml",
        "deploy/compose/compose.yaml",
        "deploy/compose/prometheus.yml",
        "deploy/compose/grafana/provisioning/datasources/prometheus.yml",
        "deploy/compose/grafana/provisioning/dashboards/sluice.yml",
    ] {
        assert!(!yaml_docs(file).is_empty(), "{file} has no document");
    }
}

// === compose ===

/// The compose Prometheus config is valid and its rule file (dashboards/alerts.yml,
/// mounted beside it) loads: checked in a temporary directory with the container's layout.
#[test]
fn compose_prometheus_config_passes_promtool() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        path("deploy/compose/prometheus.yml"),
        dir.path().join("prometheus.yml"),
    )
    .unwrap();
    std::fs::copy(path("dashboards/alerts.yml"), dir.path().join("alerts.yml")).unwrap();
    let out = run(
        Command::new("promtool")
            .args(["check", "config"])
            .arg(dir.path().join("prometheus.yml")),
        "apt-get install -y --no-install-recommends prometheus",
    );
    let text = text(&out);
    assert!(
        out.status.success(),
        "promtool check config failed:\n{text}"
    );
    assert!(text.contains("1 rule files found"), "{text}");
}

/// Every file compose.yaml mounts from the repository exists, its build uses
/// deploy/Containerfile, and sluice gets more than its shutdown grace to stop.
#[test]
fn compose_mounts_exist_and_sluice_may_finish_its_grace() {
    let compose = &yaml_docs("deploy/compose/compose.yaml")[0];
    let base = path("deploy/compose");
    let services = compose["services"].as_object().expect("services");
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().expect("short syntax").split(':').next();
            let source = source.unwrap();
            if source.starts_with('.') {
                assert!(
                    base.join(source).exists(),
                    "service {name} mounts {source}, which does not exist"
                );
            }
        }
    }
    // The context (./build) is written by build-image.sh --stage: resolve lexically.
    let build = &services["sluice"]["build"];
    let mut containerfile = PathBuf::from("deploy/compose");
    for part in [&build["context"], &build["dockerfile"]] {
        for component in Path::new(part.as_str().unwrap()).components() {
            match component {
                Component::ParentDir => assert!(containerfile.pop()),
                Component::Normal(name) => containerfile.push(name),
                _ => {}
            }
        }
    }
    assert_eq!(
        containerfile,
        Path::new("deploy/Containerfile"),
        "the sluice service is not built from deploy/Containerfile"
    );
    let grace = services["sluice"]["stop_grace_period"].as_str().unwrap();
    let secs: u64 = grace.trim_end_matches('s').parse().expect("N s");
    assert!(
        secs * 1000 > DEFAULT_GRACE_MS,
        "stop_grace_period {grace} is not above the shutdown grace"
    );
}

// === systemd ===

/// `systemd-analyze verify` accepts the unit, with ExecStart pointed at the binary
/// cargo built (the unit's /usr/local/bin/sluice need not exist here). Unknown keys and
/// bad values are only warnings to it, so any output fails the test.
#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = read("deploy/systemd/sluice.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/sluice "), "{unit}");
    let unit = unit.replace("/usr/local/bin/sluice", env!("CARGO_BIN_EXE_sluice"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.service");
    std::fs::write(&file, unit).unwrap();
    let out = run(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&file)
            .env("SYSTEMD_LOG_LEVEL", "notice")
            .env("SYSTEMD_PAGER", ""),
        "apt-get install -y --no-install-recommends systemd",
    );
    let text = text(&out);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify complained:\n{text}"
    );
}

/// The unit gives sluice more than its shutdown grace to stop, and its config checks out.
#[test]
fn systemd_unit_outlasts_the_grace_and_its_config_checks_out() {
    let unit = read("deploy/systemd/sluice.service");
    let timeout = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec=");
    let secs: u64 = timeout.trim_end_matches('s').parse().expect("seconds");
    let grace = shutdown_grace_ms(&read("deploy/systemd/sluice.toml"));
    assert!(
        secs * 1000 > grace,
        "TimeoutStopSec={timeout} is not above shutdown_grace_ms = {grace}"
    );
    for line in [
        "Type=exec",
        "DynamicUser=yes",
        "StateDirectory=sluice",
        "Environment=SLUICE_DATA_DIR=%S/sluice",
        "LoadCredential=api-key:/etc/sluice/api-key",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }

    let config = read("deploy/systemd/sluice.toml");
    assert!(
        config.contains("api_key_file = \"/run/credentials/sluice.service/api-key\""),
        "upstream.api_key_file is not the unit's %d/api-key"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .arg(path("deploy/systemd/sluice.toml"))
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{}", text(&out));
}

// === Kubernetes ===

/// The two Kubernetes examples: one pod with its queue on a volume, and a cluster of pods
/// sharing a queue in PostgreSQL.
const KUBERNETES: [&str; 2] = [
    "deploy/kubernetes/sidecar.yaml",
    "deploy/kubernetes/cluster.yaml",
];

fn sidecar(file: &str) -> (Value, Value, u64) {
    let docs = yaml_docs(file);
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
            .clone()
    };
    let deployment = kind("Deployment");
    let config = kind("ConfigMap");
    let grace = shutdown_grace_ms(config["data"]["sluice.toml"].as_str().expect("sluice.toml"));
    let pod = deployment["spec"]["template"]["spec"].clone();
    let sluice = pod["initContainers"]
        .as_array()
        .expect("initContainers")
        .iter()
        .find(|c| c["name"] == "sluice")
        .expect("an init container named sluice")
        .clone();
    (pod, sluice, grace)
}

/// sluice is a native sidecar whose probes hit the admin port, which listens for the
/// kubelet and Prometheus, while the main listener stays on the pod's loopback.
#[test]
fn sidecar_probes_use_the_admin_port() {
    for file in KUBERNETES {
        sidecar_probes_use_the_admin_port_in(file);
    }
}

fn sidecar_probes_use_the_admin_port_in(file: &str) {
    let (_, sluice, _) = sidecar(file);
    assert_eq!(sluice["restartPolicy"], "Always", "not a native sidecar");
    let env = |name: &str| {
        sluice["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name}"))
            .clone()
    };
    assert_eq!(env("SLUICE_LISTEN")["value"], "127.0.0.1:8080");
    assert_eq!(env("SLUICE_ADMIN_LISTEN")["value"], "0.0.0.0:9090");
    assert_eq!(
        env("SLUICE_API_KEY")["valueFrom"]["secretKeyRef"]["key"],
        "api-key"
    );
    let admin = sluice["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["containerPort"] == 9090)
        .expect("containerPort 9090");
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &sluice[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(
            get["port"] == admin["name"] || get["port"] == 9090,
            "{probe} is not on the admin port: {}",
            get["port"]
        );
    }
}

/// The pod's termination grace covers sluice's shutdown grace.
#[test]
fn sidecar_termination_grace_covers_the_shutdown_grace() {
    for file in KUBERNETES {
        let (pod, _, grace) = sidecar(file);
        let seconds = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        assert!(
            seconds * 1000 > grace,
            "{file}: terminationGracePeriodSeconds {seconds} is not above shutdown_grace_ms {grace}"
        );
    }
}

/// The cluster example scales out on one PostgreSQL queue: several replicas, the store's
/// URL from a Secret (never a flag or the ConfigMap), its ConfigMap a config sluice
/// accepts, and no volume that would tie a pod's queue to it.
#[test]
fn cluster_example_shares_one_postgresql_queue() {
    let file = "deploy/kubernetes/cluster.yaml";
    let docs = yaml_docs(file);
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() > 1);
    assert!(
        docs.iter().all(|d| d["kind"] != "PersistentVolumeClaim"),
        "the queue is in PostgreSQL"
    );
    let (pod, sluice, _) = sidecar(file);
    let url = sluice["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SLUICE_STORE_URL")
        .expect("SLUICE_STORE_URL");
    assert_eq!(url["valueFrom"]["secretKeyRef"]["key"], "url");
    let data = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "sluice-data")
        .unwrap();
    assert!(data["emptyDir"].is_object(), "{data:?}");
    let config = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let toml = config["data"]["sluice.toml"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{}", text(&out));
}
