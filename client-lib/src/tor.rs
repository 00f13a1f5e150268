//! The Tor transport (cargo feature `tor`), on arti-client: nodes are dialled through Tor exits,
//! each node on its own circuits (stream isolation per node), so a node sees an exit's address
//! and no two nodes can tell they serve the same client; contacts reach us at our own onion
//! service, whose key lives in the profile so the address survives restarts; contacts' onion
//! addresses are dialled through rendezvous circuits. Nobody learns the client's address (seed
//! §3.1, §4.1, §8).
//!
//! Configuration is arti's own TOML ([`TorOptions::config_file`]): without a file, the public
//! Tor network's defaults; a private network (tests) is a file with `[tor_network]`
//! authorities and fallback caches, `[path_rules]`, `[address_filter]` and
//! `[override_net_params]`. tarn only sets where arti keeps its state and cache (inside the
//! profile) unless the file says otherwise.
//!
//! Everything that can go wrong surfaces as a [`TorError`] (wrapped in the `io::Error` the
//! [`Transport`] trait returns; see [`TorError::of`]); progress and trouble that does not fail
//! a call — bootstrap, the onion service's reachability, retried connects — as [`TorEvent`]s.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arti_client::config::onion_service::OnionServiceConfigBuilder;
use arti_client::config::{BoolOrAuto, ConfigurationSource, ConfigurationSources, TorClientConfig};
use arti_client::{
    BootstrapBehavior, DataStream, ErrorKind, HasKind, IsolationToken, StreamPrefs, TorClient,
};
use futures::StreamExt;
use safelog::DisplayRedacted as _;
use tokio::sync::mpsc;
use tor_cell::relaycell::msg::Connected;
use tor_config::sources::MustRead;
use tor_hsservice::status::State;
use tor_hsservice::{HsNickname, RunningOnionService};
use tor_proto::stream::IncomingStreamRequest;
use tor_rtcompat::tokio::TokioNativeTlsRuntime;

use crate::transport::{Listener, Transport};

/// The arti client type this transport drives.
pub type ArtiClient = TorClient<TokioNativeTlsRuntime>;

/// How the Tor transport is set up.
#[derive(Clone, Debug)]
pub struct TorOptions {
    /// arti's TOML configuration; `None`: the public Tor network's defaults.
    pub config_file: Option<PathBuf>,
    /// arti's state (guards, the onion service's key): used unless the file sets
    /// `storage.state_dir`. Keep it in the profile: the onion address depends on it.
    pub state_dir: PathBuf,
    /// arti's directory cache: used unless the file sets `storage.cache_dir`.
    pub cache_dir: PathBuf,
    /// The onion service's nickname (its key in the keystore).
    pub nickname: String,
    /// The onion service's virtual port (contacts dial `<address>.onion:<port>`).
    pub onion_port: u16,
    /// Bootstrapping must finish within this.
    pub bootstrap_timeout: Duration,
    /// One connect attempt (circuit, and for onion services descriptor and rendezvous).
    pub connect_timeout: Duration,
    /// Connect attempts before giving up; every retry uses fresh circuits.
    pub attempts: u32,
    /// Pause between attempts.
    pub retry_delay: Duration,
}

impl TorOptions {
    /// Defaults with arti's state and cache inside the profile directory `profile`.
    pub fn in_profile(profile: &Path) -> TorOptions {
        TorOptions {
            config_file: None,
            state_dir: profile.join("tor").join("state"),
            cache_dir: profile.join("tor").join("cache"),
            nickname: "tarn".into(),
            onion_port: 7777,
            bootstrap_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(60),
            attempts: 3,
            retry_delay: Duration::from_secs(1),
        }
    }
}

/// Why a connect failed, in terms an application can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Tor itself is not usable yet or any more (directory, bootstrap, clock).
    TorUnavailable,
    /// The network or the destination did not answer in time.
    Timeout,
    /// The exit could not reach the destination, or refused to.
    Unreachable,
    /// The onion service could not be found or reached (not published yet, offline).
    OnionService,
    /// The target is malformed or forbidden by the configuration (local addresses).
    BadTarget,
    /// The destination closed or reset the stream.
    Closed,
    /// A local problem: configuration, state directory, keystore.
    Local,
    /// Anything else.
    Other,
}

impl ConnectFailure {
    fn of(kind: ErrorKind) -> ConnectFailure {
        use ErrorKind as K;
        match kind {
            K::BootstrapRequired
            | K::TorAccessFailed
            | K::TorDirectoryError
            | K::TorDirectoryUnusable
            | K::DirectoryExpired
            | K::ClockSkew
            | K::TorNetworkTimeout => ConnectFailure::TorUnavailable,
            K::RemoteNetworkTimeout => ConnectFailure::Timeout,
            K::RemoteConnectionRefused
            | K::RemoteHostNotFound
            | K::RemoteHostResolutionFailed
            | K::ExitPolicyRejected
            | K::RemoteNetworkFailed
            | K::NoExit => ConnectFailure::Unreachable,
            K::OnionServiceNotFound
            | K::OnionServiceNotRunning
            | K::OnionServiceConnectionFailed
            | K::OnionServiceProtocolViolation
            | K::OnionServiceAddressInvalid
            | K::OnionServiceMissingClientAuth
            | K::OnionServiceWrongClientAuth => ConnectFailure::OnionService,
            K::InvalidStreamTarget | K::ForbiddenStreamTarget => ConnectFailure::BadTarget,
            K::RemoteStreamClosed | K::RemoteStreamReset | K::RemoteStreamError => {
                ConnectFailure::Closed
            }
            K::InvalidConfig
            | K::InvalidConfigTransition
            | K::FsPermissions
            | K::NoHomeDirectory
            | K::LocalResourceAlreadyInUse
            | K::PersistentStateAccessFailed
            | K::KeystoreAccessFailed
            | K::KeystoreCorrupted
            | K::FeatureDisabled
            | K::SoftwareDeprecated => ConnectFailure::Local,
            _ => ConnectFailure::Other,
        }
    }

    /// Whether another attempt (on fresh circuits) may succeed.
    pub fn retryable(self) -> bool {
        !matches!(self, ConnectFailure::BadTarget | ConnectFailure::Local)
    }
}

/// What a destination was, for errors and events (never its address: an application may log
/// these).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A node, through an exit.
    Node,
    /// A contact's onion service.
    Contact,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Target::Node => "node",
            Target::Contact => "contact",
        })
    }
}

/// Everything the Tor transport can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TorError {
    /// The arti configuration could not be read or is invalid.
    #[error("tor configuration: {0}")]
    Config(String),
    /// arti could not start (state directory locked or unusable, no runtime).
    #[error("tor client could not start: {0}")]
    Start(String),
    /// Bootstrapping failed.
    #[error("tor bootstrap failed: {0}")]
    Bootstrap(String),
    /// Bootstrapping did not finish in time.
    #[error("tor bootstrap did not finish within {0:?}")]
    BootstrapTimeout(Duration),
    /// Every connect attempt failed.
    #[error("connecting to a {target} through tor failed after {attempts} attempts ({failure:?}): {detail}")]
    Connect {
        /// Node or contact.
        target: Target,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        failure: ConnectFailure,
        /// The last attempt's error.
        detail: String,
    },
    /// The onion service could not be launched.
    #[error("onion service: {0}")]
    OnionService(String),
    /// Contact info that is not `<address>.onion:<port>`.
    #[error("contact info is not <address>.onion:<port>")]
    BadContactInfo,
    /// A node address that is not `host:port`.
    #[error("node address is not host:port")]
    BadNodeAddress,
}

impl TorError {
    /// The [`TorError`] inside an `io::Error` returned by the transport, if any.
    pub fn of(e: &io::Error) -> Option<&TorError> {
        e.get_ref().and_then(|i| i.downcast_ref::<TorError>())
    }

    fn into_io(self) -> io::Error {
        let kind = match &self {
            TorError::Connect {
                failure: ConnectFailure::Timeout,
                ..
            }
            | TorError::BootstrapTimeout(_) => io::ErrorKind::TimedOut,
            TorError::BadContactInfo | TorError::BadNodeAddress => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

/// The onion service's reachability, as arti reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnionState {
    /// Starting: building introduction points, publishing descriptors.
    Bootstrapping,
    /// Reachable, with some trouble.
    DegradedReachable,
    /// Not reachable for now.
    DegradedUnreachable,
    /// Fully running.
    Running,
    /// Recovering from an error.
    Recovering,
    /// Broken: will not recover by itself.
    Broken,
    /// Shut down.
    Shutdown,
}

impl OnionState {
    fn of(s: State) -> OnionState {
        match s {
            State::Bootstrapping => OnionState::Bootstrapping,
            State::DegradedReachable => OnionState::DegradedReachable,
            State::DegradedUnreachable => OnionState::DegradedUnreachable,
            State::Running => OnionState::Running,
            State::Recovering => OnionState::Recovering,
            State::Broken => OnionState::Broken,
            _ => OnionState::Shutdown,
        }
    }
}

/// What the transport reports while it works.
#[derive(Clone, Debug, PartialEq)]
pub enum TorEvent {
    /// Bootstrap progress (percent), and what blocks it, if anything.
    Bootstrap {
        /// 0..=100.
        percent: u8,
        /// Why it is stuck, when it is.
        blocked: Option<String>,
    },
    /// Ready for traffic.
    Bootstrapped,
    /// The onion service changed state.
    OnionService {
        /// New state.
        state: OnionState,
        /// arti's description of the current problem, if any.
        problem: Option<String>,
    },
    /// A connect attempt failed and will be retried on fresh circuits.
    Retry {
        /// Node or contact.
        target: Target,
        /// The attempt that failed (1-based).
        attempt: u32,
        /// Why.
        failure: ConnectFailure,
    },
}

struct Inner {
    client: Arc<ArtiClient>,
    opts: TorOptions,
    /// One isolation token per destination: each node (and each contact) gets its own
    /// circuits. Replaced after a failure, so a retry never reuses a broken circuit.
    isolation: Mutex<HashMap<(Target, String), IsolationToken>>,
    events: mpsc::Sender<TorEvent>,
}

/// The Tor transport. Cheap to clone; every clone drives the same arti client.
#[derive(Clone)]
pub struct TorTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TorTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorTransport")
            .field("nickname", &self.inner.opts.nickname)
            .finish_non_exhaustive()
    }
}

/// Reads the arti configuration: the file, if any, then tarn's storage directories for what
/// the file leaves unset.
pub fn load_config(opts: &TorOptions) -> Result<TorClientConfig, TorError> {
    let mut sources = ConfigurationSources::new_empty();
    let parsed: Option<toml::Value> = match &opts.config_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| TorError::Config(format!("{}: {e}", path.display())))?;
            let v: toml::Value = toml::from_str(&text)
                .map_err(|e| TorError::Config(format!("{}: {e}", path.display())))?;
            sources.push_source(ConfigurationSource::from_path(path), MustRead::MustRead);
            Some(v)
        }
        None => None,
    };
    let storage = parsed.as_ref().and_then(|v| v.get("storage"));
    let file_sets = |key: &str| storage.is_some_and(|s| s.get(key).is_some());
    let mut overrides = String::new();
    for (key, dir) in [
        ("state_dir", &opts.state_dir),
        ("cache_dir", &opts.cache_dir),
    ] {
        if !file_sets(key) {
            let lit = toml::Value::String(
                dir.to_str()
                    .ok_or_else(|| TorError::Config(format!("{key} is not UTF-8")))?
                    .to_string(),
            );
            overrides.push_str(&format!("storage.{key} = {{ literal = {lit} }}\n"));
        }
    }
    if !overrides.is_empty() {
        sources.push_source(
            ConfigurationSource::from_verbatim(overrides),
            MustRead::MustRead,
        );
    }
    let tree = sources
        .load()
        .map_err(|e| TorError::Config(e.to_string()))?;
    tor_config::resolve::<TorClientConfig>(&tree).map_err(|e| TorError::Config(e.to_string()))
}

impl TorTransport {
    /// Starts arti with `opts` and bootstraps (bounded by `bootstrap_timeout`). Events come
    /// out of the returned channel (dropped when it is full or closed; never blocking).
    pub async fn launch(
        opts: TorOptions,
    ) -> Result<(TorTransport, mpsc::Receiver<TorEvent>), TorError> {
        let cfg = load_config(&opts)?;
        for dir in [&opts.state_dir, &opts.cache_dir] {
            // arti refuses state that others can read: private from the start.
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| TorError::Start(format!("{}: {e}", dir.display())))?;
        }
        let rt = TokioNativeTlsRuntime::current()
            .map_err(|e| TorError::Start(format!("no tokio runtime: {e}")))?;
        let client = TorClient::with_runtime(rt)
            .config(cfg)
            .bootstrap_behavior(BootstrapBehavior::Manual)
            .create_unbootstrapped_async()
            .await
            .map_err(|e| TorError::Start(chain(&e)))?;
        let (tx, rx) = mpsc::channel(256);
        let mut progress = client.bootstrap_events();
        let ptx = tx.clone();
        tokio::spawn(async move {
            let mut last = None;
            while let Some(s) = progress.next().await {
                if s.ready_for_traffic() {
                    let _ = ptx.try_send(TorEvent::Bootstrapped);
                    break;
                }
                let ev = TorEvent::Bootstrap {
                    percent: (s.as_frac().clamp(0.0, 1.0) * 100.0) as u8,
                    blocked: s.blocked().map(|b| b.to_string()),
                };
                if last.as_ref() != Some(&ev) {
                    let _ = ptx.try_send(ev.clone());
                    last = Some(ev);
                }
            }
        });
        match tokio::time::timeout(opts.bootstrap_timeout, client.bootstrap()).await {
            Err(_) => return Err(TorError::BootstrapTimeout(opts.bootstrap_timeout)),
            Ok(Err(e)) => return Err(TorError::Bootstrap(chain(&e))),
            Ok(Ok(())) => {}
        }
        Ok((
            TorTransport {
                inner: Arc::new(Inner {
                    client,
                    opts,
                    isolation: Mutex::new(HashMap::new()),
                    events: tx,
                }),
            },
            rx,
        ))
    }

    /// The arti client, for what this transport does not cover.
    pub fn client(&self) -> &Arc<ArtiClient> {
        &self.inner.client
    }

    fn token(&self, target: Target, dest: &str, fresh: bool) -> IsolationToken {
        let mut map = self
            .inner
            .isolation
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = (target, dest.to_string());
        if fresh {
            map.insert(key.clone(), IsolationToken::new());
        }
        *map.entry(key).or_insert_with(IsolationToken::new)
    }

    /// Connects to `host:port` with retries on fresh circuits.
    async fn connect(&self, target: Target, host: &str, port: u16) -> Result<DataStream, TorError> {
        let opts = &self.inner.opts;
        let dest = format!("{host}:{port}");
        let attempts = opts.attempts.max(1);
        let mut last = (ConnectFailure::Other, String::new());
        for attempt in 1..=attempts {
            let mut prefs = StreamPrefs::new();
            prefs.set_isolation(self.token(target, &dest, attempt > 1));
            if target == Target::Contact {
                prefs.connect_to_onion_services(BoolOrAuto::Explicit(true));
            }
            let tried = tokio::time::timeout(
                opts.connect_timeout,
                self.inner.client.connect_with_prefs((host, port), &prefs),
            )
            .await;
            last = match tried {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(e)) => (ConnectFailure::of(e.kind()), chain(&e)),
                Err(_) => (
                    ConnectFailure::Timeout,
                    format!("no stream within {:?}", opts.connect_timeout),
                ),
            };
            if !last.0.retryable() || attempt == attempts {
                return Err(TorError::Connect {
                    target,
                    attempts: attempt,
                    failure: last.0,
                    detail: last.1,
                });
            }
            let _ = self.inner.events.try_send(TorEvent::Retry {
                target,
                attempt,
                failure: last.0,
            });
            tokio::time::sleep(opts.retry_delay).await;
        }
        Err(TorError::Connect {
            target,
            attempts,
            failure: last.0,
            detail: last.1,
        })
    }
}

/// An error and its sources, one line (arti's top-level messages leave out the cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// Splits `host:port` (the host may be a bracketed IPv6 address).
fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

/// Parses contact info: `<56 base32 characters>.onion:<port>`.
pub fn parse_contact_info(info: &str) -> Option<(&str, u16)> {
    let (host, port) = split_host_port(info)?;
    let label = host.strip_suffix(".onion")?;
    let valid = label.len() == 56
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
    (valid && port != 0).then_some((host, port))
}

/// Incoming contact streams on our onion service. Holds the service: dropping the listener
/// takes the service down.
pub struct TorContacts {
    incoming: mpsc::Receiver<DataStream>,
    _service: Arc<RunningOnionService>,
}

impl std::fmt::Debug for TorContacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorContacts").finish_non_exhaustive()
    }
}

impl Listener for TorContacts {
    type Conn = DataStream;

    async fn accept(&mut self) -> io::Result<DataStream> {
        self.incoming
            .recv()
            .await
            .ok_or_else(|| TorError::OnionService("the onion service stopped".into()).into_io())
    }
}

impl Transport for TorTransport {
    type Conn = DataStream;
    type Listener = TorContacts;

    async fn dial_node(&self, addr: &str) -> io::Result<DataStream> {
        let (host, port) =
            split_host_port(addr).ok_or_else(|| TorError::BadNodeAddress.into_io())?;
        self.connect(Target::Node, host, port)
            .await
            .map_err(TorError::into_io)
    }

    async fn dial_contact(&self, contact_info: &str) -> io::Result<DataStream> {
        let (host, port) =
            parse_contact_info(contact_info).ok_or_else(|| TorError::BadContactInfo.into_io())?;
        self.connect(Target::Contact, host, port)
            .await
            .map_err(TorError::into_io)
    }

    /// Launches the onion service (key from the profile's keystore, created on first use) and
    /// returns `<address>.onion:<port>` as the contact info. Reachability follows as
    /// [`TorEvent::OnionService`] events; contacts that dial before the descriptor is
    /// published fail and retry.
    async fn listen(&self) -> io::Result<(TorContacts, String)> {
        let inner = &self.inner;
        let svc = (|| {
            let nick = HsNickname::new(inner.opts.nickname.clone())
                .map_err(|e| TorError::OnionService(format!("nickname: {e}")))?;
            let cfg = OnionServiceConfigBuilder::default()
                .nickname(nick)
                .build()
                .map_err(|e| TorError::OnionService(e.to_string()))?;
            let (svc, requests) = inner
                .client
                .launch_onion_service(cfg)
                .map_err(|e| TorError::OnionService(chain(&e)))?
                .ok_or_else(|| TorError::OnionService("disabled by configuration".into()))?;
            let hsid = svc
                .onion_address()
                .ok_or_else(|| TorError::OnionService("no onion address".into()))?;
            let onion = hsid.display_unredacted().to_string();
            Ok::<_, TorError>((svc, requests, onion))
        })();
        let (svc, requests, onion) = svc.map_err(TorError::into_io)?;

        let mut status = svc.status_events();
        let etx = inner.events.clone();
        tokio::spawn(async move {
            let mut last = None;
            while let Some(s) = status.next().await {
                let state = OnionState::of(s.state());
                let problem = s.current_problem().map(|p| format!("{p:?}"));
                if last != Some((state, problem.clone())) {
                    let _ = etx.try_send(TorEvent::OnionService {
                        state,
                        problem: problem.clone(),
                    });
                    last = Some((state, problem));
                }
                if state == OnionState::Shutdown {
                    break;
                }
            }
        });

        let port = inner.opts.onion_port;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut streams = Box::pin(tor_hsservice::handle_rend_requests(requests));
            while let Some(req) = streams.next().await {
                let ours =
                    matches!(req.request(), IncomingStreamRequest::Begin(b) if b.port() == port);
                if !ours {
                    // Like C tor's default for unknown ports: close the circuit.
                    let _ = req.shutdown_circuit();
                    continue;
                }
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = req.accept(Connected::new_empty()).await {
                        let _ = tx.send(stream).await;
                    }
                });
            }
        });
        Ok((
            TorContacts {
                incoming: rx,
                _service: svc,
            },
            format!("{onion}:{port}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_info_must_be_an_onion_address_with_a_port() {
        let onion = format!("{}.onion", "a".repeat(56));
        assert_eq!(
            parse_contact_info(&format!("{onion}:7777")),
            Some((onion.as_str(), 7777))
        );
        for bad in [
            onion.clone(),
            format!("{onion}:0"),
            format!("{onion}:x"),
            format!("{}.onion:7777", "a".repeat(55)),
            format!("{}.onion:7777", "A".repeat(56)),
            format!("{}.onion:7777", "1".repeat(56)),
            "127.0.0.1:7777".into(),
            "example.com:80".into(),
        ] {
            assert_eq!(parse_contact_info(&bad), None, "{bad}");
        }
    }

    #[test]
    fn node_addresses_split_into_host_and_port() {
        assert_eq!(split_host_port("127.0.0.1:7400"), Some(("127.0.0.1", 7400)));
        assert_eq!(split_host_port("[::1]:7400"), Some(("::1", 7400)));
        assert_eq!(split_host_port("node.example:1"), Some(("node.example", 1)));
        assert_eq!(split_host_port(":7400"), None);
        assert_eq!(split_host_port("127.0.0.1"), None);
        assert_eq!(split_host_port("127.0.0.1:70000"), None);
    }

    #[test]
    fn tarn_sets_storage_unless_the_file_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = TorOptions::in_profile(dir.path());
        let cfg = load_config(&opts).expect("defaults resolve");
        let shown = format!("{cfg:?}");
        assert!(shown.contains(&*dir.path().join("tor").join("state").to_string_lossy()));

        let file = dir.path().join("arti.toml");
        let own = dir.path().join("elsewhere");
        std::fs::write(
            &file,
            format!(
                "[storage]\nstate_dir = {:?}\n[application]\nwatch_configuration = false\n",
                own.to_str().unwrap()
            ),
        )
        .unwrap();
        opts.config_file = Some(file.clone());
        let shown = format!("{:?}", load_config(&opts).expect("file resolves"));
        assert!(shown.contains(&*own.to_string_lossy()), "{shown}");
        assert!(shown.contains(&*dir.path().join("tor").join("cache").to_string_lossy()));

        std::fs::write(&file, "[tor_network]\nauthorities = [{ name = 1 }]\n").unwrap();
        assert!(matches!(load_config(&opts), Err(TorError::Config(_))));
        std::fs::write(&file, "this is not toml").unwrap();
        assert!(matches!(load_config(&opts), Err(TorError::Config(_))));
        opts.config_file = Some(dir.path().join("missing.toml"));
        assert!(matches!(load_config(&opts), Err(TorError::Config(_))));
    }

    #[test]
    fn failures_are_classified_for_retry() {
        assert!(ConnectFailure::of(ErrorKind::OnionServiceNotFound).retryable());
        assert_eq!(
            ConnectFailure::of(ErrorKind::OnionServiceNotFound),
            ConnectFailure::OnionService
        );
        assert!(!ConnectFailure::of(ErrorKind::ForbiddenStreamTarget).retryable());
        assert!(!ConnectFailure::of(ErrorKind::InvalidConfig).retryable());
        let e = TorError::BadContactInfo.into_io();
        assert!(matches!(TorError::of(&e), Some(TorError::BadContactInfo)));
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
