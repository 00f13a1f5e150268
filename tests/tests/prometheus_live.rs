//! The Prometheus assets against the real tools: `promtool check/test rules`, `promtool check
//! config`, and a real Prometheus server (Debian's `prometheus` package) scraping a real tarnd on
//! loopback, read back through its HTTP API. Every Grafana panel expression is run against that
//! live Prometheus and every metric it names must be one tarnd exports. (Grafana itself is not in
//! Debian's archive, so the dashboard is checked through the queries it would send.)

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tarn_tests::Node;

fn ops() -> PathBuf {
    tarn_tests::manifest_dir().join("../ops")
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (apt-get install prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn rules_and_config_pass_promtool() {
    let dir = ops().join("prometheus");
    assert!(promtool(&["check", "rules", "tarn.rules.yml"], &dir).contains("SUCCESS"));
    assert!(promtool(&["test", "rules", "tarn.rules_test.yml"], &dir).contains("SUCCESS"));
    promtool(&["check", "config", "prometheus.example.yml"], &dir);
}

struct Reaper(Child);
impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn get(addr: &str, path: &str) -> Option<serde_json::Value> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let json = body.split_once("\r\n\r\n")?.1;
    serde_json::from_str(json).ok()
}

#[test]
fn live_prometheus_scrapes_tarnd_and_every_dashboard_query_runs() {
    // The operator guide's monitored 3-node ring: one node starts the ring, two join it.
    let dir = tempfile::tempdir().unwrap();
    let n0 = Node::start(&dir.path().join("n0"), &[]);
    let n1 = Node::start(&dir.path().join("n1"), &["--join", &n0.addr]);
    let n2 = Node::start(&dir.path().join("n2"), &["--join", &n0.addr]);
    let targets: Vec<String> = [&n0, &n1, &n2]
        .iter()
        .map(|n| format!("\"{}\"", n.metrics.clone().expect("metrics enabled")))
        .collect();
    let target = targets.join(", ");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let web = format!("127.0.0.1:{port}");
    std::fs::copy(
        ops().join("prometheus/tarn.rules.yml"),
        dir.path().join("tarn.rules.yml"),
    )
    .unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [tarn.rules.yml]\n\
             scrape_configs:\n  - job_name: tarn\n    static_configs:\n      - targets: [{target}]\n"
        ),
    )
    .unwrap();
    let prom = Reaper(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (apt-get install prometheus)"),
    );

    // Wait until Prometheus has scraped tarnd, then read a metric back.
    let deadline = Instant::now() + Duration::from_secs(60);
    let value = loop {
        let v = get(
            &web,
            &format!("/api/v1/query?query={}", encode("tarn_build_info")),
        );
        if let Some(r) = v
            .as_ref()
            .and_then(|v| v["data"]["result"].as_array())
            .filter(|r| !r.is_empty())
        {
            break r[0]["value"][1].as_str().unwrap_or("").to_string();
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped tarnd");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(value, "1");
    // The ring as Prometheus sees it: three members, each with both others as successors.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = |e: &str| {
            get(&web, &format!("/api/v1/query?query={}", encode(e))).and_then(|v| {
                v["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(String::from)
            })
        };
        let members = q("sum(tarn_ring_member)");
        let fewest = q("min(tarn_ring_successors)");
        if members.as_deref() == Some("3") && fewest.as_deref() == Some("2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw a 3-node ring: members {members:?}, fewest successors {fewest:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Let rates have two samples.
    std::thread::sleep(Duration::from_secs(3));

    let names: Vec<String> = get(&web, "/api/v1/label/__name__/values").unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ops().join("grafana/tarn-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let v = get(&web, &format!("/api/v1/query?query={}", encode(expr)))
                .expect("query answered");
            assert_eq!(
                v["status"], "success",
                "panel {:?}: {expr}: {v}",
                panel["title"]
            );
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("tarn_") {
                    assert!(
                        names.iter().any(|n| n == word),
                        "panel {:?} names {word}, which tarnd does not export",
                        panel["title"]
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 14, "{checked} expressions checked");
    drop(prom);
}
