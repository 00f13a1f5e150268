//! The operations assets shipped in ops/ agree with the code: the example config lists every
//! option with its real default, and the systemd units pass `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::Command;

use tarn_node::config::{Config, KEYS};

fn ops() -> PathBuf {
    manifest_dir().join("../../ops")
}

/// The package's directory: taken at run time (cargo sets it for tests), so a test binary built
/// in another checkout sharing the target directory still finds this checkout's files.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

#[test]
fn example_config_lists_every_option_with_its_default() {
    let text = std::fs::read_to_string(ops().join("tarnd.example.toml")).unwrap();
    let parsed = Config::from_toml(&text).unwrap_or_else(|e| panic!("example config invalid: {e}"));
    assert_eq!(
        parsed,
        Config::default(),
        "ops/tarnd.example.toml drifted from Config::default()"
    );
    for key in KEYS {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{key} ="))),
            "option {key} is missing from ops/tarnd.example.toml"
        );
    }
    let table: toml::Table = text.parse().unwrap();
    assert_eq!(
        table.len(),
        KEYS.len(),
        "the example lists an option the code does not know"
    );
}

#[test]
fn systemd_units_verify() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.exists(),
        "systemd-analyze is part of Debian's systemd package"
    );
    // verify checks that ExecStart's binary exists: point it at the built tarnd.
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("tarnd");
    assert!(
        bin.exists(),
        "{} missing: the test command builds the binaries first",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    for (unit, name) in [
        ("tarnd.service", "tarnd.service"),
        ("tarnd@.service", "tarnd@test.service"),
    ] {
        let text = std::fs::read_to_string(ops().join("systemd").join(unit)).unwrap();
        for needed in [
            "Type=notify",
            "WatchdogSec=",
            "LimitMEMLOCK=",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
        ] {
            assert!(text.contains(needed), "{unit} lacks {needed}");
        }
        let rewritten = text.replace("/usr/bin/tarnd", bin.to_str().unwrap());
        let target = dir.path().join(name);
        std::fs::write(&target, &rewritten).unwrap();
        let out = Command::new(analyze)
            .arg("verify")
            .arg(&target)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Lines about the host's own units are not ours to fix; ours must be silent.
        let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("tarnd")).collect();
        assert!(
            out.status.success() && ours.is_empty(),
            "{unit}: systemd-analyze verify said:\n{stderr}"
        );
    }
}
