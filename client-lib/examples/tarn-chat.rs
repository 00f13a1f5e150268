//! `tarn-chat`: a small chat client on tarn-client, scriptable and interactive.
//!
//! ```text
//! tarn-chat init --profile DIR --name NAME          # prints your contact card
//! tarn-chat add  --profile DIR --card CARD --secret SECRET [--name NAME]
//! tarn-chat run  --profile DIR --node ADDR[,ADDR...] [--refresh-ms N]
//!                [--transport direct|tor] [--tor-config FILE]
//! ```
//! `run` reads commands from stdin — `status A|BRB|DND|XA|NA`, `msg NAME TEXT`, `quit` — and
//! prints one event per line on stdout: `address INFO` (the contact info published for
//! contacts: `host:port`, or `<address>.onion:<port>` over Tor), `ready`, `online NAME
//! STATUS` (also when a contact's status changes), `offline NAME`, `msg NAME TEXT`. Errors go
//! to stderr.
//!
//! `--transport tor` (built with the `tor` feature) reaches nodes through Tor exits and
//! contacts through onion services; our own onion service's key lives in the profile
//! (`DIR/tor/state`), so the address stays the same across runs. `--tor-config FILE` is an
//! arti TOML configuration (a private Tor network, say); without it, the public Tor network.
//! Tor progress goes to stderr as `tor: ...` lines. `--transport direct` (the default) is
//! plain TCP: nodes and contacts see your address. A passphrase for the profile, if any, is
//! read from `TARN_PASSPHRASE`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tarn_client::engine::{self, EngineConfig, Event};
use tarn_client::profile::Profile;
use tarn_client::session::Status;
use tarn_client::transport::{DirectTcp, Transport};
use tokio::io::AsyncBufReadExt;

#[derive(Parser, Debug)]
#[command(name = "tarn-chat", about = "Presence and chat over a tarn ring")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a profile and print its contact card.
    Init {
        /// Profile directory.
        #[arg(long)]
        profile: PathBuf,
        /// Your display name.
        #[arg(long)]
        name: String,
    },
    /// Add a contact from its card and the secret you agreed on out of band.
    Add {
        /// Profile directory.
        #[arg(long)]
        profile: PathBuf,
        /// The contact's card (`tarn1:...`).
        #[arg(long)]
        card: String,
        /// The common secret.
        #[arg(long)]
        secret: String,
        /// Local name (default: the card's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Go online: publish presence, find contacts, chat (commands on stdin, events on stdout).
    Run {
        /// Profile directory.
        #[arg(long)]
        profile: PathBuf,
        /// Node addresses, comma-separated.
        #[arg(long, value_delimiter = ',')]
        node: Vec<String>,
        /// Address to listen on for contacts.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = 60_000)]
        refresh_ms: u64,
        /// How to reach nodes and contacts.
        #[arg(long, value_enum, default_value_t = TransportKind::Direct)]
        transport: TransportKind,
        /// arti TOML configuration for `--transport tor` (default: the public Tor network).
        #[arg(long)]
        tor_config: Option<PathBuf>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TransportKind {
    /// Plain TCP: nodes and contacts see your address.
    Direct,
    /// Tor: exits towards nodes, onion services between contacts.
    Tor,
}

fn passphrase() -> Option<String> {
    std::env::var("TARN_PASSPHRASE")
        .ok()
        .filter(|p| !p.is_empty())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tarn-chat: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.cmd {
        Cmd::Init { profile, name } => {
            let p = Profile::create(&profile, &name, passphrase().as_deref())?;
            println!("{}", p.identity.card().encode());
        }
        Cmd::Add {
            profile,
            card,
            secret,
            name,
        } => {
            let mut p = Profile::open(&profile, passphrase().as_deref())?;
            let parsed = tarn_client::identity::ContactCard::decode(&card)?;
            let name = name.unwrap_or(parsed.name.clone());
            p.add_contact(&name, &card, secret.as_bytes())?;
            println!("added {name}");
        }
        Cmd::Run {
            profile,
            node,
            listen,
            refresh_ms,
            transport,
            tor_config,
        } => {
            let p = Profile::open(&profile, passphrase().as_deref())?;
            let now = tarn_client::registry::local_ms() / 1000;
            let contacts = p.contacts(now, EngineConfig::default().overlap_secs)?;
            let mut cfg = EngineConfig {
                nodes: node,
                refresh: Duration::from_millis(refresh_ms),
                contact_timeout: Duration::from_secs(10),
                ..EngineConfig::default()
            };
            match transport {
                TransportKind::Direct => {
                    if tor_config.is_some() {
                        return Err("--tor-config needs --transport tor".into());
                    }
                    chat(
                        p,
                        contacts,
                        DirectTcp {
                            listen_addr: listen,
                        },
                        cfg,
                    )
                    .await?
                }
                TransportKind::Tor => {
                    // Onion rendezvous takes a few round trips through six relays.
                    cfg.contact_timeout = Duration::from_secs(120);
                    cfg.node_options.timeout = Duration::from_secs(60);
                    let t = tor_transport(&profile, tor_config).await?;
                    chat(p, contacts, t, cfg).await?
                }
            }
        }
    }
    Ok(())
}

#[cfg(feature = "tor")]
async fn tor_transport(
    profile: &std::path::Path,
    config: Option<PathBuf>,
) -> Result<tarn_client::tor::TorTransport, Box<dyn std::error::Error>> {
    use tarn_client::tor::{TorEvent, TorOptions, TorTransport};
    let opts = TorOptions {
        config_file: config,
        ..TorOptions::in_profile(profile)
    };
    eprintln!("tor: bootstrapping");
    let (t, mut events) = TorTransport::launch(opts).await?;
    eprintln!("tor: bootstrapped");
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            match e {
                TorEvent::Bootstrap { percent, blocked } => match blocked {
                    Some(b) => eprintln!("tor: bootstrap {percent}% blocked: {b}"),
                    None => eprintln!("tor: bootstrap {percent}%"),
                },
                TorEvent::Bootstrapped => {}
                TorEvent::OnionService { state, problem } => match problem {
                    Some(p) => eprintln!("tor: onion service {state:?}: {p}"),
                    None => eprintln!("tor: onion service {state:?}"),
                },
                TorEvent::Retry {
                    target,
                    attempt,
                    failure,
                } => eprintln!(
                    "tor: {target} connect attempt {attempt} failed ({failure:?}), retrying"
                ),
            }
        }
    });
    Ok(t)
}

#[cfg(not(feature = "tor"))]
async fn tor_transport(
    _: &std::path::Path,
    _: Option<PathBuf>,
) -> Result<tarn_client::transport::DirectTcp, Box<dyn std::error::Error>> {
    Err("this tarn-chat was built without the `tor` feature".into())
}

/// Runs the engine on `transport`: stdin commands in, events out.
async fn chat<T: Transport>(
    p: Profile,
    contacts: Vec<tarn_client::profile::Contact>,
    transport: T,
    cfg: EngineConfig,
) -> Result<(), Box<dyn std::error::Error>> {
    let (handle, mut events) = engine::start(p.identity.clone(), contacts, transport, cfg).await?;
    println!("address {}", handle.contact_info);
    println!("ready");
    let printer = tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            match e {
                Event::Online { name, status } | Event::StatusChanged { name, status } => {
                    println!("online {name} {}", status.name())
                }
                Event::Offline { name } => println!("offline {name}"),
                Event::Message { name, text } => println!("msg {name} {text}"),
                Event::Error(e) => eprintln!("tarn-chat: {e}"),
            }
        }
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim();
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        match cmd {
            "status" => match Status::parse(rest.trim()) {
                Some(s) if s != Status::Off => handle.set_status(s).await,
                _ => eprintln!("tarn-chat: status takes A, BRB, DND, XA or NA"),
            },
            "msg" => {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                if !handle.send(name, text).await {
                    eprintln!("tarn-chat: {name} is not online");
                }
            }
            "quit" => break,
            "" => {}
            other => eprintln!("tarn-chat: unknown command {other:?}"),
        }
    }
    handle.quit().await;
    printer.abort();
    Ok(())
}
