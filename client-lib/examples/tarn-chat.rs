//! `tarn-chat`: a small chat client on tarn-client, scriptable and interactive.
//!
//! ```text
//! tarn-chat init --profile DIR --name NAME          # prints your contact card
//! tarn-chat add  --profile DIR --card CARD --secret SECRET [--name NAME]
//! tarn-chat run  --profile DIR --node ADDR[,ADDR...] [--refresh-ms N]
//! ```
//! `run` reads commands from stdin — `status A|BRB|DND|XA|NA`, `msg NAME TEXT`, `quit` — and
//! prints one event per line on stdout: `ready`, `online NAME STATUS` (also when a contact's
//! status changes), `offline NAME`, `msg NAME TEXT`. Errors go to stderr. The transport here
//! is direct TCP (contacts see your address); Tor comes with the Tor issue. A passphrase for
//! the profile, if any, is read from `TARN_PASSPHRASE`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tarn_client::engine::{self, EngineConfig, Event};
use tarn_client::profile::Profile;
use tarn_client::session::Status;
use tarn_client::transport::DirectTcp;
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
    },
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
        } => {
            let p = Profile::open(&profile, passphrase().as_deref())?;
            let now = tarn_client::registry::local_ms() / 1000;
            let contacts = p.contacts(now, EngineConfig::default().overlap_secs)?;
            let cfg = EngineConfig {
                nodes: node,
                refresh: Duration::from_millis(refresh_ms),
                contact_timeout: Duration::from_secs(10),
                ..EngineConfig::default()
            };
            let transport = DirectTcp {
                listen_addr: listen,
            };
            let (handle, mut events) =
                engine::start(p.identity.clone(), contacts, transport, cfg).await?;
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
        }
    }
    Ok(())
}
