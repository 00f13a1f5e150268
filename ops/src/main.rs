//! `tarnctl`: operator and developer commands against a tarn node.
//!
//! Exit codes: 0 success; 1 the thing asked for is not there (e.g. `get` found nothing), the
//! node refused the request, or `ring` saw an invariant violation; 2 usage or connection errors.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;
use tarn_client::{NodeClient, NodeOptions};
use tarn_proto::msg::{InsertReply, RetrieveReply};
use tarn_proto::{Epoch, Key, NetworkId};

#[derive(Parser, Debug)]
#[command(name = "tarnctl", version, about = "Inspect and drive tarn nodes")]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Network name the node belongs to.
    #[arg(long, global = true, default_value = "tarn-dev", env = "TARN_NETWORK")]
    network: String,
    /// Per-request deadline in seconds.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
    /// The node's ed25519 public key (64 hex digits, from `tarnctl nodes` or a bootstrap
    /// list): the encrypted channel is then authenticated to it. Without it, tarnctl trusts
    /// the key the node presents (trust on first use) and says so on stderr.
    #[arg(long, global = true, env = "TARN_NODE_KEY")]
    node_key: Option<String>,
    /// Use the plaintext protocol instead of the encrypted channel (nodes accept it from
    /// loopback only, by default).
    #[arg(long, global = true)]
    plaintext: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Validate a tarnd configuration file exactly as tarnd does at start-up; lists every
    /// problem by key. Exit 0 valid, 1 invalid.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Create a node key (ed25519, mode 0600) in a data directory and print the node's ring id
    /// and public key. Refuses to overwrite an existing key.
    Keygen {
        /// The node's data directory.
        #[arg(long)]
        data_dir: std::path::PathBuf,
    },
    /// Store a value (hex) under an epoch and key.
    Put {
        /// Node address HOST:PORT.
        #[arg(long)]
        node: String,
        /// Epoch number.
        #[arg(long)]
        epoch: u64,
        /// Key, 64 hex digits.
        #[arg(long)]
        key: String,
        /// Value as hex.
        #[arg(long)]
        value_hex: String,
    },
    /// Fetch the values under an epoch and key; prints each as hex, one per line. Exit 1 when
    /// nothing is stored.
    Get {
        /// Node address HOST:PORT.
        #[arg(long)]
        node: String,
        /// Epoch number.
        #[arg(long)]
        epoch: u64,
        /// Key, 64 hex digits.
        #[arg(long)]
        key: String,
    },
    /// The node's disciplined time and the current epoch.
    Time {
        /// Node address HOST:PORT.
        #[arg(long)]
        node: String,
    },
    /// Live nodes the node knows (NODE_LIST).
    Nodes {
        /// Node address HOST:PORT.
        #[arg(long)]
        node: String,
        /// At most this many entries.
        #[arg(long, default_value_t = 32)]
        max: u32,
    },
    /// Node id, version, uptime, epoch, time offset, records per epoch, and its ring
    /// position (predecessor, successors).
    Status {
        /// Node address HOST:PORT.
        #[arg(long)]
        node: String,
    },
    /// Walk the ring from a node along successor lists; print each member's id, address,
    /// predecessor and key range in ring order, and every invariant violation seen (a member
    /// whose successor does not name it as predecessor, unordered or duplicate successor lists,
    /// unreachable members, a walk that does not close). Exit 1 when there is a violation.
    Ring {
        /// Node address HOST:PORT to start from.
        #[arg(long)]
        node: String,
    },
    /// Operator-signed bootstrap lists (addresses + public keys) that clients pin.
    #[command(subcommand)]
    Bootstrap(BootstrapCmd),
    /// Drain the tarnd whose data directory is given: SIGTERM to the PID in its `tarnd.pid`
    /// (it hands its records to its successors, leaves the ring, finishes what it has read and
    /// exits); waits for the exit. Needs the rights to signal the process (run as its user or
    /// root). Under systemd, `systemctl stop tarnd` does the same.
    Drain {
        /// The node's data directory.
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// Seconds to wait for the exit.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Ask a node to look up the node responsible for a key; print the route and the replica
    /// set.
    Lookup {
        /// Node address HOST:PORT.
        #[arg(long)]
        node: String,
        /// Key (or any ring id), 64 hex digits.
        #[arg(long)]
        key: String,
    },
}

#[derive(Subcommand, Debug)]
enum BootstrapCmd {
    /// Create an operator key (ed25519, mode 0600); prints its public key, which clients pin.
    Keygen {
        /// Where to write the key (refuses to overwrite).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Sign a list of the members a node knows (NODE_LIST: each key proven by a handshake).
    Sign {
        /// The operator key file.
        #[arg(long)]
        operator_key: std::path::PathBuf,
        /// A member to ask for the list.
        #[arg(long)]
        node: String,
        /// At most this many entries.
        #[arg(long, default_value_t = 32)]
        max: u32,
        /// Where to write the list.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Verify a list against a pinned operator public key; print its nodes. Exit 1 when it
    /// does not verify.
    Verify {
        /// The list file.
        #[arg(long)]
        list: std::path::PathBuf,
        /// The operator's public key, 64 hex digits.
        #[arg(long)]
        operator: String,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Check FILE.
    Check {
        /// The TOML file.
        file: std::path::PathBuf,
    },
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    hex::decode(s).map_err(|e| format!("value is not hex: {e}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tarnctl: {e}");
            ExitCode::from(2)
        }
    }
}

async fn connect(cli: &Cli, node: &str) -> anyhow::Result<NodeClient> {
    let channel = if cli.plaintext {
        tarn_client::Channel::Plaintext
    } else {
        let node_key = match &cli.node_key {
            Some(h) => {
                let mut k = [0u8; 32];
                hex::decode_to_slice(h, &mut k).map_err(|e| anyhow::anyhow!("--node-key: {e}"))?;
                Some(k)
            }
            None => None,
        };
        tarn_client::Channel::Encrypted { node_key }
    };
    let opts = NodeOptions {
        network: NetworkId::from_name(&cli.network),
        timeout: Duration::from_secs(cli.timeout),
        channel,
        ..Default::default()
    };
    let c = NodeClient::connect(node, &opts).await?;
    if c.trusted_on_first_use() {
        eprintln!(
            "tarnctl: {node}: encrypted to the key the node presented ({}…), not to a pinned key (trust on first use; pass --node-key to pin it)",
            &hex::encode(c.hello().public_key)[..16]
        );
    }
    Ok(c)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.cmd {
        Cmd::Config(ConfigCmd::Check { file }) => {
            let cli_like = tarn_node::config::Cli {
                config: Some(file.clone()),
                ..Default::default()
            };
            match tarn_node::config::Config::load(&cli_like) {
                Ok(_) => {
                    if cli.json {
                        println!("{}", json!({"valid": true, "problems": []}));
                    } else {
                        println!("{}: valid", file.display());
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    if cli.json {
                        let problems: Vec<_> =
                            e.0.iter()
                                .map(|p| json!({"key": p.key, "problem": p.message}))
                                .collect();
                        println!("{}", json!({"valid": false, "problems": problems}));
                    } else {
                        for p in &e.0 {
                            println!("{}: {p}", file.display());
                        }
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        Cmd::Keygen { data_dir } => {
            let path = data_dir.join(tarn_node::identity::KEY_FILE);
            if path.exists() {
                anyhow::bail!(
                    "{} exists; refusing to replace a node's identity",
                    path.display()
                );
            }
            std::fs::create_dir_all(data_dir)?;
            let id = tarn_node::identity::Identity::load_or_create(data_dir)?;
            if cli.json {
                println!(
                    "{}",
                    json!({"key_file": path.display().to_string(), "node_id": id.id.to_hex(), "public_key": hex::encode(id.public_key)})
                );
            } else {
                println!("key file    {}", path.display());
                println!("node id     {}", id.id.to_hex());
                println!("public key  {}", hex::encode(id.public_key));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Put {
            node,
            epoch,
            key,
            value_hex,
        } => {
            let key = Key::from_hex(key).map_err(|e| anyhow::anyhow!("--key: {e}"))?;
            let value = parse_hex(value_hex).map_err(|e| anyhow::anyhow!("--value-hex: {e}"))?;
            let c = connect(&cli, node).await?;
            match c.insert(Epoch(*epoch), key, value).await? {
                InsertReply::Stored { copies } => {
                    if cli.json {
                        println!("{}", json!({"stored": true, "copies": copies}));
                    } else {
                        println!("stored (copies: {copies})");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                InsertReply::Failed(cause) => {
                    if cli.json {
                        println!("{}", json!({"stored": false, "cause": cause.to_string()}));
                    } else {
                        eprintln!("tarnctl: insert failed: {cause}");
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        Cmd::Get { node, epoch, key } => {
            let key = Key::from_hex(key).map_err(|e| anyhow::anyhow!("--key: {e}"))?;
            let c = connect(&cli, node).await?;
            let (values, code) = match c.retrieve(Epoch(*epoch), key).await? {
                RetrieveReply::Found(v) => (v, ExitCode::SUCCESS),
                RetrieveReply::NotFound => (Vec::new(), ExitCode::from(1)),
                RetrieveReply::Failed(cause) => {
                    eprintln!("tarnctl: retrieve failed: {cause}");
                    return Ok(ExitCode::from(1));
                }
            };
            if cli.json {
                let hexes: Vec<String> = values.iter().map(hex::encode).collect();
                println!("{}", json!({"found": !values.is_empty(), "values": hexes}));
            } else {
                for v in &values {
                    println!("{}", hex::encode(v));
                }
            }
            Ok(code)
        }
        Cmd::Time { node } => {
            let c = connect(&cli, node).await?;
            let t = c.time().await?;
            let epoch = Epoch::at_unix_ns(t.unix_ns, t.epoch_len_secs);
            if cli.json {
                println!(
                    "{}",
                    json!({"unix_ns": t.unix_ns, "uncertainty_ns": t.uncertainty_ns, "epoch_len_secs": t.epoch_len_secs,
                           "epoch": epoch.0, "ntp_synced": t.ntp_synced})
                );
            } else {
                println!(
                    "unix_ns={} uncertainty_ms={:.3} epoch={} epoch_len_secs={} ntp_synced={}",
                    t.unix_ns,
                    t.uncertainty_ns as f64 / 1e6,
                    epoch.0,
                    t.epoch_len_secs,
                    t.ntp_synced
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Nodes { node, max } => {
            let c = connect(&cli, node).await?;
            let list = c.node_list(*max).await?;
            if cli.json {
                let nodes: Vec<_> = list
                    .nodes
                    .iter()
                    .map(|n| json!({"id": n.id.to_hex(), "public_key": hex::encode(n.public_key), "address": n.address}))
                    .collect();
                println!("{}", json!({ "nodes": nodes }));
            } else {
                for n in &list.nodes {
                    println!(
                        "{} {} {}",
                        n.id.to_hex(),
                        n.address,
                        hex::encode(n.public_key)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { node } => {
            let c = connect(&cli, node).await?;
            let s = c.status().await?;
            if cli.json {
                let epochs: Vec<_> = s
                    .epochs
                    .iter()
                    .map(|e| json!({"epoch": e.epoch.0, "records": e.records, "bytes": e.bytes}))
                    .collect();
                let ring = c.ring_info().await.ok().map(|r| {
                    json!({"member": r.member, "replicas": r.replicas,
                           "predecessor": r.predecessor.as_ref().map(|p| json!({"id": p.id.to_hex(), "address": p.address})),
                           "successors": r.successors.iter().map(|n| json!({"id": n.id.to_hex(), "address": n.address})).collect::<Vec<_>>()})
                });
                println!(
                    "{}",
                    json!({"node_id": s.node_id.to_hex(), "version": s.version, "uptime_secs": s.uptime_secs,
                           "epoch_len_secs": s.epoch_len_secs, "epoch": s.now_epoch.0, "time_offset_ns": s.time_offset_ns,
                           "ntp_synced": s.ntp_synced, "cores": s.cores, "epochs": epochs, "ring": ring})
                );
            } else {
                println!("node_id      {}", s.node_id.to_hex());
                println!("version      {}", s.version);
                println!("uptime       {}s", s.uptime_secs);
                println!("cores        {}", s.cores);
                println!(
                    "epoch        {} (length {}s)",
                    s.now_epoch.0, s.epoch_len_secs
                );
                println!(
                    "time offset  {:.3} ms (ntp synced: {})",
                    s.time_offset_ns as f64 / 1e6,
                    s.ntp_synced
                );
                for e in &s.epochs {
                    println!(
                        "epoch {:>12}  records {:>10}  bytes {:>12}",
                        e.epoch.0, e.records, e.bytes
                    );
                }
                if let Ok(r) = c.ring_info().await {
                    println!("ring member  {} (replicas {})", r.member, r.replicas);
                    match &r.predecessor {
                        Some(p) => println!("predecessor  {} {}", p.id.to_hex(), p.address),
                        None => println!("predecessor  none"),
                    }
                    for (i, n) in r.successors.iter().enumerate() {
                        println!("successor {i}  {} {}", n.id.to_hex(), n.address);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ring { node } => ring_walk(&cli, node).await,
        Cmd::Bootstrap(b) => bootstrap(&cli, b).await,
        Cmd::Drain { data_dir, wait } => drain(&cli, data_dir, *wait).await,
        Cmd::Lookup { node, key } => {
            let target =
                tarn_proto::Id::from_hex(key).map_err(|e| anyhow::anyhow!("--key: {e}"))?;
            let c = connect(&cli, node).await?;
            let r = c.lookup(target).await?;
            let ok = !r.found.is_empty();
            if cli.json {
                let n = |n: &tarn_proto::msg::NodeInfo| json!({"id": n.id.to_hex(), "address": n.address});
                println!(
                    "{}",
                    json!({"target": target.to_hex(), "route": r.route.iter().map(n).collect::<Vec<_>>(),
                           "found": r.found.iter().map(n).collect::<Vec<_>>()})
                );
            } else {
                for (i, h) in r.route.iter().enumerate() {
                    println!("hop {i}  {} {}", h.id.to_hex(), h.address);
                }
                match r.found.first() {
                    Some(f) => {
                        println!("responsible  {} {}", f.id.to_hex(), f.address);
                        for s in &r.found[1..] {
                            println!("then         {} {}", s.id.to_hex(), s.address);
                        }
                    }
                    None => println!("lookup failed"),
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Walks the ring along first successors, checking what each member says.
async fn ring_walk(cli: &Cli, start: &str) -> anyhow::Result<ExitCode> {
    use tarn_proto::msg::RingInfoReply;
    let mut members: Vec<RingInfoReply> = Vec::new();
    let mut violations: Vec<String> = Vec::new();
    let mut addr = start.to_string();
    let first = connect(cli, start).await?.ring_info().await?;
    let start_id = first.me.id;
    let mut info = first;
    loop {
        if !info.member {
            violations.push(format!(
                "{} ({}) is not a ring member",
                info.me.address,
                info.me.id.short()
            ));
        }
        let me = info.me.id;
        let mut prev = me;
        let mut seen = std::collections::HashSet::new();
        for s in &info.successors {
            if s.id == me {
                violations.push(format!("{} lists itself as a successor", info.me.address));
            }
            if !seen.insert(s.id) {
                violations.push(format!("{} lists {} twice", info.me.address, s.address));
            }
            if prev != me && !s.id.in_open(&prev, &me) && s.id != me {
                violations.push(format!(
                    "{}: successor list out of ring order at {}",
                    info.me.address, s.address
                ));
            }
            prev = s.id;
        }
        let next = info.successors.first().cloned();
        members.push(info);
        let Some(next) = next else { break };
        if next.id == start_id {
            break;
        }
        if members.len() > 4096 || members.iter().any(|m| m.me.id == next.id) {
            violations.push(format!(
                "the walk from {start} does not return to it (a loop or a split ring)"
            ));
            break;
        }
        addr = next.address.clone();
        match connect(cli, &addr).await {
            Ok(c) => match c.ring_info().await {
                Ok(i) => info = i,
                Err(e) => {
                    violations.push(format!("{addr} did not answer: {e}"));
                    break;
                }
            },
            Err(e) => {
                violations.push(format!("{addr} is unreachable: {e}"));
                break;
            }
        }
    }
    // Each member's successor must name it as predecessor; ids must go round exactly once.
    let n = members.len();
    let mut wraps = 0;
    for i in 0..n {
        let (a, b) = (&members[i], &members[(i + 1) % n]);
        if n > 1 && b.predecessor.as_ref().map(|p| p.id) != Some(a.me.id) {
            violations.push(format!(
                "{} follows {} but names {} as predecessor",
                b.me.address,
                a.me.address,
                b.predecessor
                    .as_ref()
                    .map_or("nobody".to_string(), |p| p.address.clone())
            ));
        }
        if b.me.id <= a.me.id {
            wraps += 1;
        }
    }
    // Zave's invariant: every list holds min(r, n - 1) entries (for a closed walk).
    let closed = !violations.iter().any(|v| {
        v.contains("does not return") || v.contains("unreachable") || v.contains("did not answer")
    });
    for m in &members {
        let want = (m.succ_list_len as usize).min(n.saturating_sub(1));
        if closed && m.successors.len() < want {
            violations.push(format!(
                "{} holds {} successors, the ring of {n} needs {want}",
                m.me.address,
                m.successors.len()
            ));
        }
    }
    if n > 1 && wraps != 1 {
        violations.push(format!(
            "member ids wrap around {wraps} times (a disordered ring)"
        ));
    }
    let _ = addr;
    if cli.json {
        let list: Vec<_> = members
            .iter()
            .map(|m| {
                json!({"id": m.me.id.to_hex(), "address": m.me.address,
                       "predecessor": m.predecessor.as_ref().map(|p| p.id.to_hex()),
                       "range": {"after": m.predecessor.as_ref().map(|p| p.id.to_hex()), "upto": m.me.id.to_hex()},
                       "successors": m.successors.iter().map(|s| s.id.to_hex()).collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", json!({"members": list, "violations": violations}));
    } else {
        for m in &members {
            let pred = m
                .predecessor
                .as_ref()
                .map_or("none".to_string(), |p| p.id.short());
            println!(
                "{} {:<21} pred {} range ({}, {}] successors {}",
                m.me.id.to_hex(),
                m.me.address,
                pred,
                pred,
                m.me.id.short(),
                m.successors.len()
            );
        }
        for v in &violations {
            println!("VIOLATION {v}");
        }
        println!("{} members, {} violations", members.len(), violations.len());
    }
    Ok(if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn read_operator_key(path: &std::path::Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let secret: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("{}: not an operator key (32 bytes)", path.display()))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&secret))
}

async fn bootstrap(cli: &Cli, cmd: &BootstrapCmd) -> anyhow::Result<ExitCode> {
    use tarn_client::{BootstrapList, BootstrapNode};
    match cmd {
        BootstrapCmd::Keygen { out } => {
            let secret: [u8; 32] = rand::random();
            let key = ed25519_dalek::SigningKey::from_bytes(&secret);
            write_private(out, &secret)?;
            let public = hex::encode(key.verifying_key().to_bytes());
            if cli.json {
                println!(
                    "{}",
                    json!({"key_file": out.display().to_string(), "operator": public})
                );
            } else {
                println!("operator key  {}", out.display());
                println!("public key    {public}   (clients pin this)");
            }
            Ok(ExitCode::SUCCESS)
        }
        BootstrapCmd::Sign {
            operator_key,
            node,
            max,
            out,
        } => {
            let key = read_operator_key(operator_key)?;
            let c = connect(cli, node).await?;
            let nodes: Vec<BootstrapNode> = c
                .node_list(*max)
                .await?
                .nodes
                .into_iter()
                .filter(|n| n.public_key != [0; 32])
                .map(|n| BootstrapNode {
                    address: n.address,
                    public_key: hex::encode(n.public_key),
                })
                .collect();
            if nodes.is_empty() {
                anyhow::bail!("{node} named no member with a proven key");
            }
            let list = BootstrapList::sign(&key, &cli.network, unix_now(), nodes);
            std::fs::write(out, list.to_toml())
                .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
            if cli.json {
                println!(
                    "{}",
                    json!({"list": out.display().to_string(), "nodes": list.nodes.len()})
                );
            } else {
                println!("signed {} nodes into {}", list.nodes.len(), out.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        BootstrapCmd::Verify { list, operator } => {
            let mut pinned = [0u8; 32];
            hex::decode_to_slice(operator, &mut pinned)
                .map_err(|e| anyhow::anyhow!("--operator: {e}"))?;
            let text = std::fs::read_to_string(list)
                .map_err(|e| anyhow::anyhow!("{}: {e}", list.display()))?;
            let verified =
                BootstrapList::parse(&text).and_then(|l| l.verify(&pinned, &cli.network));
            match verified {
                Ok(nodes) => {
                    if cli.json {
                        let v: Vec<_> = nodes
                            .iter()
                            .map(|n| json!({"id": n.id.to_hex(), "address": n.address, "public_key": hex::encode(n.public_key)}))
                            .collect();
                        println!("{}", json!({"valid": true, "nodes": v}));
                    } else {
                        for n in &nodes {
                            println!(
                                "{} {} {}",
                                n.id.to_hex(),
                                n.address,
                                hex::encode(n.public_key)
                            );
                        }
                        println!("{}: valid, {} nodes", list.display(), nodes.len());
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    if cli.json {
                        println!("{}", json!({"valid": false, "problem": e.to_string()}));
                    } else {
                        println!("{}: INVALID: {e}", list.display());
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

async fn drain(cli: &Cli, data_dir: &std::path::Path, wait: u64) -> anyhow::Result<ExitCode> {
    let pid_file = data_dir.join(tarn_node::PID_FILE);
    let text = std::fs::read_to_string(&pid_file)
        .map_err(|e| anyhow::anyhow!("{}: {e} (is tarnd running there?)", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{}: not a PID", pid_file.display()))?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "tarnd" {
        anyhow::bail!(
            "PID {pid} from {} is not a running tarnd",
            pid_file.display()
        );
    }
    // SAFETY: kill(2) with a PID read from tarnd's own PID file and checked above.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        anyhow::bail!(
            "cannot signal PID {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    let started = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        if started.elapsed() > Duration::from_secs(wait) {
            anyhow::bail!("tarnd (PID {pid}) still running after {wait} s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    if cli.json {
        println!("{}", json!({"drained": true, "pid": pid, "seconds": secs}));
    } else {
        println!("tarnd (PID {pid}) handed its records over and stopped in {secs:.1} s");
    }
    Ok(ExitCode::SUCCESS)
}
