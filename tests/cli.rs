//! The command line as a user meets it: `check-config` on good and bad files.

use std::process::Command;

fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("the binary runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_example_config_checks_out() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
            .unwrap();
    let (ok, text) = check_config(&example);
    assert!(ok, "{text}");
    assert!(text.contains(": ok"), "{text}");
}

#[test]
fn a_bad_key_or_value_fails_naming_it() {
    let (ok, text) = check_config("[server]\nlisten = \"127.0.0.1:1\"\nmax_body = 5\n");
    assert!(!ok);
    assert!(
        text.contains("max_body") && text.contains("line 3"),
        "{text}"
    );

    let (ok, text) = check_config("[queue]\nsynchronous = \"sometimes\"\n");
    assert!(!ok);
    assert!(text.contains("sometimes"), "{text}");

    let (ok, text) = check_config("[upstream]\nurl = \"ftp://api\"\n");
    assert!(!ok);
    assert!(text.contains("upstream.url"), "{text}");
}

#[test]
fn the_api_key_is_not_a_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--api-key", "secret"])
        .output()
        .expect("the binary runs");
    assert!(!out.status.success(), "ps would show a key given as a flag");
}
