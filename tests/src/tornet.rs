//! A private Tor network on 127.0.0.1 for tests: `tests/tornet/tornet.sh` generates the keys
//! and torrcs of 3 directory authorities, 3 middle relays and 2 exits (`TestingTorNetwork 1`,
//! exits bind their outbound connections to 127.0.0.2), starts them, and waits until every
//! relay has bootstrapped and the consensus lists all of them with the flags clients need.
//! It writes `arti-network.toml`, the arti configuration for this network. [`TorNet`] stops
//! every tor process it started, by PID, when dropped (also when the test fails).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running private Tor network.
#[derive(Debug)]
pub struct TorNet {
    /// Where the relays' data directories, logs and PID files are.
    pub dir: PathBuf,
    /// arti's configuration for this network (authorities, fallbacks, path rules, address
    /// filter, net-parameter overrides); storage is left to the client.
    pub arti_config: PathBuf,
}

impl TorNet {
    /// Starts the network in `dir` on ports `base_port..base_port + 16` and waits (bounded by
    /// the script, 300 s) until it is usable; panics with the relays' logs otherwise.
    pub fn start(dir: &Path, base_port: u16) -> TorNet {
        let script = crate::manifest_dir().join("tornet/tornet.sh");
        std::fs::create_dir_all(dir).expect("tornet dir");
        // Constructed before the start, so the drop stops whatever did start if it fails.
        let net = TorNet {
            dir: dir.to_path_buf(),
            arti_config: dir.join("arti-network.toml"),
        };
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir)
            .arg(base_port.to_string())
            .env("TORNET_TIMEOUT", "300")
            .output()
            .expect("run tornet.sh");
        if !out.status.success() {
            panic!(
                "the private Tor network did not come up:\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                net.log_tails(20)
            );
        }
        assert!(net.arti_config.exists(), "tornet.sh wrote no arti config");
        net
    }

    /// PIDs of the tor processes (from their PID files).
    pub fn pids(&self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    }

    /// The last `n` lines of every relay's notice log.
    pub fn log_tails(&self, n: usize) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join("notice.log").exists())
            .collect();
        dirs.sort();
        for d in dirs {
            let text = std::fs::read_to_string(d.join("notice.log")).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {}\n", d.display()));
            for l in &lines[lines.len().saturating_sub(n)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// Whether `pid` is a live (not zombie) tor process, so a recycled PID is never signalled.
fn is_tor(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "<pid> (<comm>) <state> ..."
    let Some((comm, rest)) = stat.split_once(") ") else {
        return false;
    };
    comm.ends_with("(tor") && !rest.starts_with('Z')
}

impl Drop for TorNet {
    fn drop(&mut self) {
        let pids: Vec<i32> = self.pids().into_iter().filter(|p| is_tor(*p)).collect();
        for &pid in &pids {
            // SAFETY: kill(2) on a tor process this network started (checked by name above).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids.iter().any(|p| is_tor(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for &pid in pids.iter().filter(|p| is_tor(**p)) {
            // SAFETY: as above; it ignored SIGTERM for 10 s.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}
