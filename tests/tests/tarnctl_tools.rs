//! tarnctl's offline tools: `config check` (tarnd's own validation) and `keygen`.

use std::process::Command;

use tarn_tests::bin;

#[test]
fn config_check_reports_every_problem_and_accepts_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let example = tarn_tests::manifest_dir()
        .join("../ops/tarnd.example.toml")
        .to_string_lossy()
        .into_owned();
    let example = example.as_str();
    let ok = Command::new(bin("tarnctl"))
        .args(["config", "check", example])
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "epoch_secs = 0\nlisten = \"nowhere\"\nfrobnicate = true\n",
    )
    .unwrap();
    let out = Command::new(bin("tarnctl"))
        .args(["--json", "config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let keys: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    for k in ["epoch_secs", "listen", "frobnicate"] {
        assert!(keys.contains(&k), "{k} not reported: {keys:?}");
    }
}

#[test]
fn keygen_creates_a_private_key_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let out = Command::new(bin("tarnctl"))
        .args(["--json", "keygen", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["node_id"].as_str().unwrap().len(), 64);
    let mode = std::fs::metadata(data.join("node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = Command::new(bin("tarnctl"))
        .args(["keygen", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(2),
        "refuses to replace an identity"
    );
}
