//! The Debian package built by `cargo deb -p tarn-node` (the test command builds it into
//! `$CARGO_TARGET_DIR/debian/tarn.deb` before the tests run). Verified here: the control fields,
//! the file list, an install into a scratch root with its own dpkg database (`dpkg --root`), the
//! installed tarnd starting from the installed config with the installed unit's flags, the
//! installed units passing `systemd-analyze verify`, and removal leaving the conffile.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tarn_tests::bin_dir;

fn deb() -> PathBuf {
    let p = bin_dir()
        .parent()
        .expect("target dir")
        .join("debian/tarn.deb");
    assert!(
        p.exists(),
        "{} missing: the test command runs `cargo deb` first",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn package_installs_into_a_scratch_root_and_runs() {
    let deb = deb();
    let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    assert!(info.contains("Package: tarn"), "{info}");
    assert!(
        info.contains("Depends:") && info.contains("libc6"),
        "{info}"
    );
    let list = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "./usr/bin/tarnd",
        "./usr/bin/tarnctl",
        "./lib/systemd/system/tarnd.service",
        "./lib/systemd/system/tarnd@.service",
        "./etc/tarn/tarnd.toml",
        "./usr/share/doc/tarn/README.md",
        "./usr/share/doc/tarn/metrics.md",
        "./usr/share/tarn/prometheus/tarn.rules.yml",
        "./usr/share/tarn/grafana/tarn-dashboard.json",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(path)),
            "{path} not in the package:\n{list}"
        );
    }

    // A scratch root with an empty dpkg database.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(r.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", r.display()))
            .args(["--force-depends", "--no-triggers"])
            .args(args);
        c
    };
    run(dpkg(&["-i", deb.to_str().unwrap()]).stdin(Stdio::null()));
    assert!(run(&mut dpkg(&["-s", "tarn"])).contains("Status: install ok installed"));

    // The installed binary starts from the installed config with the unit's flags.
    let unit = std::fs::read_to_string(r.join("lib/systemd/system/tarnd.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    assert!(exec.starts_with("/usr/bin/tarnd --config /etc/tarn/tarnd.toml"));
    let state = r.join("var/lib/tarn");
    std::fs::create_dir_all(&state).unwrap();
    let out = Command::new(r.join("usr/bin/tarnd"))
        .arg("--config")
        .arg(r.join("etc/tarn/tarnd.toml"))
        .arg("--data-dir")
        .arg(&state)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--cores",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = out.id() as i32;
    let mut child = out;
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("tarnd ready"), "{line}");
    // SAFETY: signalling the child we started.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let version = run(Command::new(r.join("usr/bin/tarnctl")).arg("--version"));
    assert!(version.contains(env!("CARGO_PKG_VERSION")));

    // The installed units verify, with ExecStart pointed into the scratch root.
    for u in ["tarnd.service", "tarnd@.service"] {
        let text = std::fs::read_to_string(r.join("lib/systemd/system").join(u)).unwrap();
        let name = if u.contains('@') {
            "tarnd@pkg.service"
        } else {
            u
        };
        let tmp = root.path().join(name);
        std::fs::write(
            &tmp,
            text.replace("/usr/bin/tarnd", r.join("usr/bin/tarnd").to_str().unwrap()),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&tmp)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.lines().any(|l| l.contains("tarnd")),
            "{u}: {err}"
        );
    }

    // Removal takes the files and keeps the edited-or-not conffile (dpkg's rule for -r).
    run(&mut dpkg(&["-r", "tarn"]));
    assert!(!r.join("usr/bin/tarnd").exists());
    assert!(Path::new(&r.join("etc/tarn/tarnd.toml")).exists());
}
