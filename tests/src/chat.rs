//! Driving `tarn-chat` (the example client) from tests: one-shot commands and running users
//! whose stdout events are awaited line by line.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `tarn-chat` example binary.
pub fn chat_bin() -> PathBuf {
    let p = crate::bin_dir().join("examples/tarn-chat");
    assert!(
        p.exists(),
        "{} missing: cargo build --release --examples -p tarn-client",
        p.display()
    );
    p
}

/// Runs a one-shot `tarn-chat` command; panics unless it succeeds; returns stdout.
pub fn chat(args: &[&str]) -> String {
    let out = Command::new(chat_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tarn-chat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Two users who are each other's contact.
#[derive(Debug)]
pub struct Pair {
    /// Alice's profile directory.
    pub alice: PathBuf,
    /// Bob's profile directory.
    pub bob: PathBuf,
    /// Alice's contact card.
    pub card_a: String,
    /// Bob's contact card.
    pub card_b: String,
}

/// Creates the profiles `dir/alice` and `dir/bob` with `tarn-chat init` and adds each as the
/// other's contact with the common `secret`.
pub fn alice_and_bob(dir: &Path, secret: &str) -> Pair {
    let (alice, bob) = (dir.join("alice"), dir.join("bob"));
    let card_a = chat(&[
        "init",
        "--profile",
        alice.to_str().unwrap(),
        "--name",
        "alice",
    ]);
    let card_b = chat(&["init", "--profile", bob.to_str().unwrap(), "--name", "bob"]);
    for (p, card) in [(&alice, &card_b), (&bob, &card_a)] {
        chat(&[
            "add",
            "--profile",
            p.to_str().unwrap(),
            "--card",
            card,
            "--secret",
            secret,
        ]);
    }
    Pair {
        alice,
        bob,
        card_a,
        card_b,
    }
}

/// The nodes' client addresses, comma-separated (`tarn-chat --node`).
pub fn node_list(nodes: &[crate::Node]) -> String {
    nodes
        .iter()
        .map(|n| n.addr.clone())
        .collect::<Vec<_>>()
        .join(",")
}

/// A running `tarn-chat run`, killed (by PID) when dropped.
#[derive(Debug)]
pub struct User {
    /// The process.
    pub child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl User {
    /// `tarn-chat run` with `refresh_ms`; waits for `ready` (20 s).
    pub fn run(profile: &Path, nodes: &str, refresh_ms: u64) -> User {
        User::run_with(
            profile,
            nodes,
            refresh_ms,
            &[],
            Stdio::null(),
            Duration::from_secs(20),
        )
    }

    /// `tarn-chat run` with extra arguments and `stderr` going where the caller says; waits
    /// for `ready` within `ready_within`.
    pub fn run_with(
        profile: &Path,
        nodes: &str,
        refresh_ms: u64,
        extra: &[&str],
        stderr: Stdio,
        ready_within: Duration,
    ) -> User {
        let mut child = Command::new(chat_bin())
            .args([
                "run",
                "--profile",
                profile.to_str().unwrap(),
                "--node",
                nodes,
                "--refresh-ms",
                &refresh_ms.to_string(),
            ])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut u = User {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        };
        u.expect("ready", ready_within);
        u
    }

    /// Waits (bounded) for the process to exit; its exit code, or `None` if it had to be
    /// killed.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes one command line to its stdin.
    pub fn say(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits for an exact output line.
    pub fn expect(&mut self, line: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self.seen.iter().position(|l| l == line) {
                self.seen.remove(i);
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("no {line:?} within {within:?}; saw {:?}", self.seen),
            }
        }
    }

    /// Every line that arrives within `d`.
    pub fn drain(&mut self, d: Duration) -> Vec<String> {
        let deadline = Instant::now() + d;
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(l);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
