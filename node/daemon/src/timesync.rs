//! The time relay (seed §6.3): an SNTP client inside the node disciplines a clock offset that
//! TIME_SYNC answers with.
//!
//! Deviation from the seed, on purpose: the seed's node asks the time server on every request.
//! tarnd polls its configured servers on a timer instead and answers from the kept offset, so a
//! TIME_SYNC costs no network round trip and cannot be used to make the node flood a time
//! server. Without configured servers the node answers with its system clock and says so
//! (`ntp_synced = false`).
//!
//! Filtering: per server, the sample with the smallest round-trip delay among the last eight
//! (NTP's clock filter); across servers, the median offset, so one lying server among three
//! cannot move the clock. Replies that are not server-mode, unsynchronised (leap 3, stratum 0
//! "kiss of death") or do not echo our transmit timestamp are ignored.

use std::collections::VecDeque;
use std::net::{ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from 1900 (NTP era 0) to 1970.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
const SAMPLES_KEPT: usize = 8;

/// The node's disciplined clock, shared by every core.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ns: AtomicI64,
    uncertainty_ns: AtomicU64,
    synced: AtomicBool,
    reachable: AtomicUsize,
}

/// A reading of the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// Corrected Unix time in nanoseconds.
    pub unix_ns: u64,
    /// Estimated error.
    pub uncertainty_ns: u64,
    /// Whether NTP disciplines the clock.
    pub synced: bool,
}

/// System time in Unix nanoseconds.
pub fn system_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Clock {
    /// A clock that follows the system clock until the first poll succeeds.
    pub fn new() -> Arc<Clock> {
        Arc::new(Clock::default())
    }

    /// Now, corrected.
    pub fn now(&self) -> Reading {
        let offset = self.offset_ns.load(Ordering::Relaxed);
        Reading {
            unix_ns: system_ns().saturating_add_signed(offset),
            uncertainty_ns: self.uncertainty_ns.load(Ordering::Relaxed),
            synced: self.synced.load(Ordering::Relaxed),
        }
    }

    /// Offset from the system clock in nanoseconds.
    pub fn offset_ns(&self) -> i64 {
        self.offset_ns.load(Ordering::Relaxed)
    }

    /// Servers that answered the last poll.
    pub fn reachable_servers(&self) -> usize {
        self.reachable.load(Ordering::Relaxed)
    }

    fn set(&self, offset_ns: i64, uncertainty_ns: u64, reachable: usize) {
        self.offset_ns.store(offset_ns, Ordering::Relaxed);
        self.uncertainty_ns.store(uncertainty_ns, Ordering::Relaxed);
        self.synced.store(true, Ordering::Relaxed);
        self.reachable.store(reachable, Ordering::Relaxed);
    }
}

/// One measurement against one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Server clock minus ours.
    pub offset_ns: i64,
    /// Round-trip delay less the server's processing time.
    pub delay_ns: u64,
    /// The server's own distance to its reference (root delay / 2 + root dispersion).
    pub root_distance_ns: u64,
}

/// Why a reply was not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SntpError {
    /// Not a 48-byte reply.
    #[error("reply of {0} bytes")]
    Short(usize),
    /// Wrong mode or version.
    #[error("not a server reply (mode {mode}, version {version})")]
    NotServer {
        /// Mode field.
        mode: u8,
        /// Version field.
        version: u8,
    },
    /// The server says it is not synchronised.
    #[error("server unsynchronised (leap {leap}, stratum {stratum})")]
    Unsynchronised {
        /// Leap indicator.
        leap: u8,
        /// Stratum.
        stratum: u8,
    },
    /// The reply does not echo our request.
    #[error("origin timestamp mismatch")]
    Bogus,
}

fn to_ntp(unix_ns: u64) -> u64 {
    let secs = unix_ns / 1_000_000_000 + NTP_UNIX_OFFSET;
    let frac = ((unix_ns % 1_000_000_000) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

fn from_ntp(ts: u64) -> i128 {
    let secs = (ts >> 32) as i128 - NTP_UNIX_OFFSET as i128;
    let frac = ((ts & 0xffff_ffff) as i128 * 1_000_000_000) >> 32;
    secs * 1_000_000_000 + frac
}

fn short_to_ns(v: u32) -> u64 {
    ((v as u64) * 1_000_000_000) >> 16
}

/// Builds a client request (mode 3, version 4) carrying `t1` as its transmit timestamp.
pub fn request(t1_unix_ns: u64) -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = (4 << 3) | 3;
    p[40..48].copy_from_slice(&to_ntp(t1_unix_ns).to_be_bytes());
    p
}

/// Builds a server reply (for tests and fake servers): `server_ns` is the server's clock.
pub fn reply(req: &[u8], server_ns: u64, stratum: u8) -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = (4 << 3) | 4;
    p[1] = stratum;
    p[24..32].copy_from_slice(&req[40..48]);
    let ts = to_ntp(server_ns).to_be_bytes();
    p[32..40].copy_from_slice(&ts);
    p[40..48].copy_from_slice(&ts);
    p
}

/// Parses a reply to a request sent at `t1` and received at `t4` (our clock).
pub fn parse_reply(p: &[u8], t1_unix_ns: u64, t4_unix_ns: u64) -> Result<Sample, SntpError> {
    if p.len() < 48 {
        return Err(SntpError::Short(p.len()));
    }
    let leap = p[0] >> 6;
    let version = (p[0] >> 3) & 7;
    let mode = p[0] & 7;
    let stratum = p[1];
    if mode != 4 || !(1..=4).contains(&version) {
        return Err(SntpError::NotServer { mode, version });
    }
    if leap == 3 || stratum == 0 || stratum > 15 {
        return Err(SntpError::Unsynchronised { leap, stratum });
    }
    let origin = u64::from_be_bytes(p[24..32].try_into().expect("8 bytes"));
    if origin != to_ntp(t1_unix_ns) {
        return Err(SntpError::Bogus);
    }
    let t2 = from_ntp(u64::from_be_bytes(p[32..40].try_into().expect("8 bytes")));
    let t3 = from_ntp(u64::from_be_bytes(p[40..48].try_into().expect("8 bytes")));
    let (t1, t4) = (t1_unix_ns as i128, t4_unix_ns as i128);
    let offset = ((t2 - t1) + (t3 - t4)) / 2;
    let delay = ((t4 - t1) - (t3 - t2)).max(0);
    let root_delay = short_to_ns(u32::from_be_bytes(p[4..8].try_into().expect("4 bytes")));
    let root_disp = short_to_ns(u32::from_be_bytes(p[8..12].try_into().expect("4 bytes")));
    Ok(Sample {
        offset_ns: offset.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
        delay_ns: delay.min(u64::MAX as i128) as u64,
        root_distance_ns: root_delay / 2 + root_disp,
    })
}

/// Per-server sample history and the combination rule.
#[derive(Debug, Default)]
pub struct Filter {
    servers: Vec<VecDeque<Sample>>,
}

impl Filter {
    /// A filter for `n` servers.
    pub fn new(n: usize) -> Filter {
        Filter {
            servers: vec![VecDeque::new(); n],
        }
    }

    /// Records a sample from server `i`.
    pub fn add(&mut self, i: usize, s: Sample) {
        let q = &mut self.servers[i];
        if q.len() == SAMPLES_KEPT {
            q.pop_front();
        }
        q.push_back(s);
    }

    /// The combined `(offset, uncertainty)`: median over servers of each server's
    /// minimum-delay sample. `None` until some server has answered.
    pub fn combine(&self) -> Option<(i64, u64)> {
        let mut best: Vec<Sample> = self
            .servers
            .iter()
            .filter_map(|q| q.iter().min_by_key(|s| s.delay_ns).copied())
            .collect();
        if best.is_empty() {
            return None;
        }
        best.sort_by_key(|s| s.offset_ns);
        let n = best.len();
        let (offset, chosen) = if n % 2 == 1 {
            (best[n / 2].offset_ns, best[n / 2])
        } else {
            let (a, b) = (best[n / 2 - 1], best[n / 2]);
            let chosen = if a.delay_ns <= b.delay_ns { a } else { b };
            (
                ((a.offset_ns as i128 + b.offset_ns as i128) / 2) as i64,
                chosen,
            )
        };
        Some((offset, chosen.delay_ns / 2 + chosen.root_distance_ns))
    }
}

/// Queries one server once.
pub fn query(server: &str, timeout: Duration) -> Result<Sample, String> {
    let addr = server
        .to_socket_addrs()
        .map_err(|e| format!("resolve: {e}"))?
        .next()
        .ok_or_else(|| "resolve: no address".to_string())?;
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
    sock.connect(addr).map_err(|e| format!("connect: {e}"))?;
    let t1 = system_ns();
    sock.send(&request(t1)).map_err(|e| format!("send: {e}"))?;
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 512];
    loop {
        // One overall deadline: stray datagrams must not keep us waiting forever.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err("receive: timed out".into());
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let n = sock.recv(&mut buf).map_err(|e| format!("receive: {e}"))?;
        let t4 = system_ns();
        match parse_reply(&buf[..n], t1, t4) {
            Ok(s) => return Ok(s),
            // A stray or stale datagram: keep waiting for ours until the deadline.
            Err(SntpError::Bogus) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Polls `servers` every `interval` until `stop` is set, updating `clock`.
pub fn run_poller(
    servers: Vec<String>,
    interval: Duration,
    clock: Arc<Clock>,
    stop: Arc<AtomicBool>,
) {
    let mut filter = Filter::new(servers.len());
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let mut reachable = 0;
        for (i, server) in servers.iter().enumerate() {
            match query(server, Duration::from_secs(1)) {
                Ok(s) => {
                    reachable += 1;
                    filter.add(i, s);
                }
                Err(e) => tracing::debug!(server = i, error = %e, "time server did not answer"),
            }
        }
        if let Some((offset, uncertainty)) = filter.combine() {
            if first {
                tracing::info!(
                    offset_ms = offset / 1_000_000,
                    reachable,
                    "clock disciplined by time servers"
                );
                first = false;
            }
            clock.set(offset, uncertainty, reachable);
        } else {
            clock.reachable.store(reachable, Ordering::Relaxed);
            tracing::warn!("no time server answered; serving the system clock");
        }
        // Poll faster until every server has a few samples, then at the configured interval.
        let wait = if filter.servers.iter().any(|q| q.len() < 3) {
            interval.min(Duration::from_secs(2))
        } else {
            interval
        };
        let deadline = std::time::Instant::now() + wait;
        while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_timestamps_round_trip() {
        let t = 1_780_000_000_123_456_789u64;
        let back = from_ntp(to_ntp(t));
        assert!((back - t as i128).abs() < 2);
    }

    #[test]
    fn offset_and_delay_from_a_reply() {
        let t1 = 1_000_000_000_000_000_000u64;
        let server = t1 + 37_000_000_000 + 5_000_000; // server is +37 s, reply 5 ms into the trip
        let r = reply(&request(t1), server, 2);
        let s = parse_reply(&r, t1, t1 + 10_000_000).unwrap();
        assert!((s.offset_ns - 37_000_000_000).abs() < 1_000, "{s:?}");
        assert!((s.delay_ns as i64 - 10_000_000).abs() < 1_000);
    }

    #[test]
    fn bad_replies_are_refused() {
        let t1 = 1_000_000_000_000_000_000u64;
        let mut r = reply(&request(t1), t1, 2);
        assert_eq!(parse_reply(&r[..20], t1, t1), Err(SntpError::Short(20)));
        r[1] = 0;
        assert!(matches!(
            parse_reply(&r, t1, t1),
            Err(SntpError::Unsynchronised { .. })
        ));
        let r = reply(&request(t1 + 1_000_000), t1, 2);
        assert_eq!(parse_reply(&r, t1, t1), Err(SntpError::Bogus));
        let mut r = reply(&request(t1), t1, 2);
        r[0] = (4 << 3) | 3;
        assert!(matches!(
            parse_reply(&r, t1, t1),
            Err(SntpError::NotServer { .. })
        ));
    }

    #[test]
    fn median_ignores_one_liar() {
        let mut f = Filter::new(3);
        let s = |o: i64, d: u64| Sample {
            offset_ns: o,
            delay_ns: d,
            root_distance_ns: 0,
        };
        f.add(0, s(37_000_000_000, 1_000));
        f.add(1, s(37_001_000_000, 2_000));
        f.add(2, s(-5_000_000_000_000, 500));
        let (offset, _) = f.combine().unwrap();
        assert_eq!(offset, 37_000_000_000);
    }

    #[test]
    fn min_delay_sample_wins_per_server() {
        let mut f = Filter::new(1);
        f.add(
            0,
            Sample {
                offset_ns: 900,
                delay_ns: 90_000,
                root_distance_ns: 0,
            },
        );
        f.add(
            0,
            Sample {
                offset_ns: 100,
                delay_ns: 10_000,
                root_distance_ns: 0,
            },
        );
        assert_eq!(f.combine(), Some((100, 5_000)));
    }
}
