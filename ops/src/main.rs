//! `tarnctl`: operator and developer commands against a tarn node.
//!
//! Exit codes: 0 success; 1 the thing asked for is not there (e.g. `get` found nothing) or the
//! node refused the request; 2 usage or connection errors.

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
    /// Node id, version, uptime, epoch, time offset and records per epoch.
    Status {
        /// Node address HOST:PORT.
        #[arg(long)]
        node: String,
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
    let opts = NodeOptions {
        network: NetworkId::from_name(&cli.network),
        timeout: Duration::from_secs(cli.timeout),
        ..Default::default()
    };
    Ok(NodeClient::connect(node, &opts).await?)
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
                println!(
                    "{}",
                    json!({"node_id": s.node_id.to_hex(), "version": s.version, "uptime_secs": s.uptime_secs,
                           "epoch_len_secs": s.epoch_len_secs, "epoch": s.now_epoch.0, "time_offset_ns": s.time_offset_ns,
                           "ntp_synced": s.ntp_synced, "cores": s.cores, "epochs": epochs})
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
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
