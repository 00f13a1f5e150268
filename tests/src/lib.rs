//! Helpers for black-box tests: start real `tarnd` processes on loopback with temporary data
//! directories, talk to them, stop them by PID.
//!
//! The binaries are found next to the test executable's directory (`target/<profile>/`); the
//! test command builds them first (`cargo build --release --bins`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tarn_client::{NodeClient, NodeOptions};

pub mod chat;
pub mod tornet;

/// The tests package's directory: taken at run time (cargo sets it for tests), so a test
/// binary built in another checkout sharing the target directory still finds this checkout's
/// files.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

/// Directory holding the workspace's binaries for the running profile.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    let dir = if deps.ends_with("deps") {
        deps.parent().expect("profile dir")
    } else {
        deps
    };
    dir.to_path_buf()
}

/// Path of a workspace binary, with a clear message when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release --bins` first (the test command does)",
        p.display()
    );
    p
}

/// A running tarnd, killed (by PID) when dropped.
#[derive(Debug)]
pub struct Node {
    /// The process.
    pub child: Option<Child>,
    /// Client address.
    pub addr: String,
    /// Metrics address, if enabled.
    pub metrics: Option<String>,
    /// Node id hex.
    pub node_id: String,
    /// Data directory (kept across restarts).
    pub data_dir: PathBuf,
    /// Extra arguments it was started with (reused on restart).
    pub args: Vec<String>,
    /// Captured stderr lines (logs).
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// How a start attempt ended.
#[derive(Debug)]
pub enum Started {
    /// Serving.
    Ready(Node),
    /// Exited before serving, with its exit code and stderr.
    Failed {
        /// Exit code.
        code: Option<i32>,
        /// Everything it printed on stderr.
        stderr: String,
    },
}

impl Node {
    /// Starts tarnd on 127.0.0.1 port 0 with `data_dir` and extra `args`; panics unless it
    /// becomes ready.
    pub fn start(data_dir: &Path, args: &[&str]) -> Node {
        match Node::try_start(data_dir, args) {
            Started::Ready(n) => n,
            Started::Failed { code, stderr } => {
                panic!("tarnd failed to start (exit {code:?}):\n{stderr}")
            }
        }
    }

    /// Starts tarnd, reporting failure instead of panicking.
    pub fn try_start(data_dir: &Path, args: &[&str]) -> Started {
        let mut full: Vec<String> = vec![
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ];
        if !args.contains(&"--cores") {
            full.extend(["--cores".into(), "2".into()]);
        }
        if !args.contains(&"--listen") {
            full.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        full.extend(args.iter().map(|s| s.to_string()));
        Node::spawn(data_dir.to_path_buf(), full)
    }

    fn spawn(data_dir: PathBuf, args: Vec<String>) -> Started {
        let mut child = Command::new(bin("tarnd"))
            .args(&args)
            .env_remove("TARN_CONFIG")
            .env_remove("TARN_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tarnd");
        let stderr_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr_reader = {
            let err = child.stderr.take().expect("stderr");
            let sink = stderr_lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            })
        };
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
                let field = |k: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(&format!("{k}=")))
                        .map(String::from)
                };
                let addr = field("listen").expect("ready line has listen=");
                let metrics = field("metrics").filter(|m| m != "off");
                let node_id = field("node_id").expect("ready line has node_id=");
                return Started::Ready(Node {
                    child: Some(child),
                    addr,
                    metrics,
                    node_id,
                    data_dir,
                    args,
                    stderr: stderr_lines,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let _ = stderr_reader.join();
                let stderr = stderr_lines.lock().unwrap().join("\n");
                return Started::Failed {
                    code: status.code(),
                    stderr,
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tarnd did not become ready within 60 s");
            }
        }
    }

    /// The PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of a child we started and have not reaped.
        unsafe {
            libc::kill(self.pid() as i32, signal);
        }
    }

    /// SIGTERM and wait for the exit code (bounded).
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(30))
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(10));
    }

    /// Waits for the process to exit; kills it after `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tarnd did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again with the same data directory, address and arguments.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node first");
        let mut args = self.args.clone();
        let listen = args.iter().position(|a| a == "--listen").map(|i| i + 1);
        if let Some(i) = listen {
            args[i] = self.addr.clone();
        }
        let mut started = Node::spawn(self.data_dir.clone(), args.clone());
        // Between the old process's death and this start, the kernel may have handed the
        // port to another test's outgoing connection as its ephemeral port. Such connections
        // are short (scrapes, probes): try the same port for a few seconds, since clients
        // that know the old address can only come back on it; then take a fresh one (the
        // data directory is what must survive).
        let cannot_listen = |s: &Started| matches!(s, Started::Failed { stderr, .. } if stderr.contains("cannot listen"));
        if let Some(i) = listen {
            let deadline = Instant::now() + Duration::from_secs(5);
            while cannot_listen(&started) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                started = Node::spawn(self.data_dir.clone(), args.clone());
            }
            if cannot_listen(&started) {
                args[i] = "127.0.0.1:0".into();
                started = Node::spawn(self.data_dir.clone(), args);
            }
        }
        match started {
            Started::Ready(mut n) => {
                self.child = n.child.take();
                self.addr = n.addr.clone();
                self.metrics = n.metrics.clone();
                self.stderr = n.stderr.clone();
            }
            Started::Failed { code, stderr } => panic!("restart failed (exit {code:?}):\n{stderr}"),
        }
    }

    /// Connects a node client with default options.
    pub async fn client(&self) -> NodeClient {
        NodeClient::connect(&self.addr, &NodeOptions::default())
            .await
            .expect("connect to tarnd")
    }

    /// Connects a node client with a given timeout.
    pub async fn client_with_timeout(&self, timeout: Duration) -> NodeClient {
        let opts = NodeOptions {
            timeout,
            ..Default::default()
        };
        NodeClient::connect(&self.addr, &opts)
            .await
            .expect("connect to tarnd")
    }

    /// Fetches `/metrics` text.
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let addr = self.metrics.as_ref().expect("metrics enabled");
        let mut s = std::net::TcpStream::connect(addr).expect("connect metrics");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    }

    /// The logs so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The plaintext hello frame (network "tarn-dev") that raw-socket tests start with.
pub fn hello_frame() -> Vec<u8> {
    let hello = tarn_proto::msg::Hello {
        version: 1,
        network: tarn_proto::NetworkId::from_name("tarn-dev"),
        epoch_len_secs: 0,
    };
    tarn_proto::frame::encode_to_vec(0, &tarn_proto::Message::Hello(hello)).unwrap()
}

/// The current epoch for `epoch_secs` by the system clock.
pub fn epoch_now(epoch_secs: u64) -> tarn_proto::Epoch {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    tarn_proto::Epoch::at_unix_secs(secs, epoch_secs)
}

/// A key from a number.
pub fn key(n: u64) -> tarn_proto::Key {
    tarn_proto::Key(*blake3::hash(&n.to_le_bytes()).as_bytes())
}

/// The value of a plain (unlabelled or fully-labelled) sample in Prometheus text.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// Starts a ring of `n` tarnd (`--cores 1` plus `args`) in subdirectories `n0..` of `dir`:
/// the first starts the ring, the others join it; returns once every node's NODE_LIST names
/// all `n` members (panics after 60 s).
pub async fn start_ring(dir: &Path, n: usize, args: &[&str]) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let mut a: Vec<&str> = vec!["--cores", "1"];
        a.extend_from_slice(args);
        let join = nodes.first().map(|f| f.addr.clone());
        if let Some(j) = &join {
            a.extend(["--join", j.as_str()]);
        }
        nodes.push(Node::start(&dir.join(format!("n{i}")), &a));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut sizes = Vec::new();
        for node in &nodes {
            let size = match NodeClient::connect(&node.addr, &NodeOptions::default()).await {
                Ok(c) => c.node_list(64).await.map_or(0, |l| l.nodes.len()),
                Err(_) => 0,
            };
            sizes.push(size);
        }
        if sizes.iter().all(|s| *s == n) {
            return nodes;
        }
        assert!(
            Instant::now() < deadline,
            "ring of {n} did not converge: {sizes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
