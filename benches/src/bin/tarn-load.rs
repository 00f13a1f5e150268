//! `tarn-load`: a closed-loop load generator for tarnd, and for redis-server with the same keys
//! and values so the two can be compared side by side.
//!
//! Each of `--conns` connections keeps `--pipeline` requests in flight; a request is an INSERT
//! (Redis: SET) with probability `--insert-pct`, else a RETRIEVE (GET) of a key drawn uniformly
//! from `--keys` keys (those `--preload` writes). Every insert writes a key never written
//! before (derived from a per-run nonce, the connection and a counter), so each key holds one
//! value on both servers: tarnd keeps up to 8 values per key where SET overwrites, and reusing
//! keys would make its sets and replies grow through a run. Latency is measured per request
//! from send to reply into an HdrHistogram. The run stops after `--duration` or `--count`
//! requests, whichever comes first.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rkyv::rancor;
use tarn_proto::frame::{self, Parsed, HEADER_LEN};
use tarn_proto::msg::{ArchivedInsertReply, ArchivedRetrieveReply, Hello, Insert, Retrieve};
use tarn_proto::{Decoder, Epoch, Key, Kind, Message, NetworkId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tarn-load",
    about = "Load generator for tarnd and redis-server"
)]
struct Args {
    /// tarn://HOST:PORT or redis://HOST:PORT.
    #[arg(long)]
    target: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 300)]
    value_bytes: usize,
    /// Percentage of requests that are inserts (the rest are retrieves).
    #[arg(long, default_value_t = 50)]
    insert_pct: u32,
    /// Keys that retrieves read (and `--preload` writes); inserts write fresh keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Insert every key once before measuring.
    #[arg(long)]
    preload: bool,
    /// How long to run, e.g. 5s, 500ms.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many requests (0: no limit).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Open loop: send this many requests per second in total, on schedule, whether or not
    /// replies have come (up to --pipeline in flight per connection); latency is measured from
    /// the intended send time, so queueing is not hidden (no coordinated omission).
    #[arg(long)]
    rate: Option<f64>,
    /// Network name (tarn targets).
    #[arg(long, default_value = "tarn-dev")]
    network: String,
    /// Load-generator threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// PID of the server, to report its CPU seconds per operation (Linux /proc).
    #[arg(long)]
    server_pid: Option<u32>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "s" | "" => n,
        "ms" => n / 1e3,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    Tarn,
    Redis,
}

struct Shared {
    args: Args,
    proto: Proto,
    addr: String,
    keys: Vec<Key>,
    /// Makes this run's fresh insert keys differ from every other run's.
    nonce: u64,
    value: Vec<u8>,
    epoch: Epoch,
    /// Request frames encoded once, patched per request (tarn only).
    templates: Option<Templates>,
    stop: AtomicBool,
    issued: AtomicU64,
    errors: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (proto, addr) = match args.target.split_once("://") {
        Some(("tarn", a)) => (Proto::Tarn, a.to_string()),
        Some(("redis", a)) => (Proto::Redis, a.to_string()),
        _ => bail!("--target must be tarn://HOST:PORT or redis://HOST:PORT"),
    };
    if args.conns == 0 || args.pipeline == 0 || args.insert_pct > 100 || args.keys == 0 {
        bail!("--conns, --pipeline and --keys must be positive and --insert-pct at most 100");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(run(args, proto, addr))
}

async fn run(args: Args, proto: Proto, addr: String) -> anyhow::Result<()> {
    let keys: Vec<Key> = (0..args.keys)
        .map(|i| Key(*blake3::hash(&i.to_le_bytes()).as_bytes()))
        .collect();
    let epoch = match proto {
        Proto::Tarn => {
            let c = tarn_client::NodeClient::connect(
                &addr,
                &tarn_client::NodeOptions {
                    network: NetworkId::from_name(&args.network),
                    // The load itself uses the plaintext protocol (loopback), like redis.
                    channel: tarn_client::Channel::Plaintext,
                    ..Default::default()
                },
            )
            .await
            .context("connecting to the target")?;
            let t = c.time().await?;
            Epoch::at_unix_ns(t.unix_ns, t.epoch_len_secs)
        }
        Proto::Redis => Epoch(0),
    };
    let value = vec![0xa5; args.value_bytes];
    let templates = match proto {
        Proto::Tarn => Templates::new(epoch, &keys, &value)?,
        Proto::Redis => None,
    };
    let shared = Arc::new(Shared {
        nonce: rand::random(),
        value,
        args: args.clone(),
        proto,
        addr,
        keys,
        epoch,
        templates,
        stop: AtomicBool::new(false),
        issued: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });

    if args.preload {
        preload(&shared).await?;
    }

    let cpu_before = args.server_pid.and_then(cpu_seconds);
    let own_before = cpu_seconds(std::process::id());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.conns {
        let s = shared.clone();
        tasks.push(tokio::spawn(async move { connection(s, c as u64).await }));
    }
    let s = shared.clone();
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(s.args.duration).await;
        s.stop.store(true, Ordering::Relaxed);
    });
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut done = 0u64;
    for t in tasks {
        match t.await? {
            Ok((h, n)) => {
                hist.add(h)?;
                done += n;
            }
            Err(e) => {
                eprintln!("tarn-load: connection failed: {e:#}");
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    stopper.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let per_op = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(a), Some(b)) if done > 0 => Some((b - a) / done as f64),
        _ => None,
    };
    let cpu_per_op = per_op(cpu_before, args.server_pid.and_then(cpu_seconds));
    // The generator's own CPU per operation: near one core's worth of it per op means the
    // generator, not the server, set the pace.
    let load_cpu_per_op = per_op(own_before, cpu_seconds(std::process::id()));
    let ops = done as f64 / elapsed;
    let errors = shared.errors.load(Ordering::Relaxed);
    if args.json {
        let v = serde_json::json!({
            "target": args.target, "conns": args.conns, "pipeline": args.pipeline, "value_bytes": args.value_bytes,
            "insert_pct": args.insert_pct, "keys": args.keys, "duration_secs": elapsed, "ops": done,
            "ops_per_sec": ops, "p50_us": hist.value_at_quantile(0.5), "p99_us": hist.value_at_quantile(0.99),
            "p999_us": hist.value_at_quantile(0.999), "max_us": hist.max(), "errors": errors,
            "server_cpu_us_per_op": cpu_per_op.map(|c| c * 1e6),
            "load_cpu_us_per_op": load_cpu_per_op.map(|c| c * 1e6),
        });
        println!("{v}");
    } else {
        println!(
            "{} ops in {:.2}s: {:.0} ops/s  p50 {}us  p99 {}us  p99.9 {}us  max {}us  errors {}{}{}",
            done,
            elapsed,
            ops,
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99),
            hist.value_at_quantile(0.999),
            hist.max(),
            errors,
            cpu_per_op
                .map(|c| format!("  server cpu {:.2}us/op", c * 1e6))
                .unwrap_or_default(),
            load_cpu_per_op
                .map(|c| format!("  load cpu {:.2}us/op", c * 1e6))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// utime + stime of a process in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // /proc reports USER_HZ ticks, 100 per second on every Linux architecture tarn targets.
    Some(ticks / 100.0)
}

async fn preload(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let n = shared.keys.len();
    let per = n.div_ceil(shared.args.conns.min(16));
    let mut tasks = Vec::new();
    for (i, chunk) in (0..n).collect::<Vec<_>>().chunks(per).enumerate() {
        let s = shared.clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&s).await?;
            for batch in chunk.chunks(64) {
                for (j, k) in batch.iter().enumerate() {
                    conn.send(&s, true, s.keys[*k], j as u64)?;
                }
                conn.flush().await?;
                for _ in batch {
                    conn.recv(&s).await?;
                }
            }
            anyhow::Ok(i)
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    start: usize,
    decoder: Decoder,
    /// Scratch for validating reply archives in place.
    aligned: rkyv::util::AlignedVec<16>,
}

/// An INSERT and a RETRIEVE frame encoded once, and where in each the key and request id sit:
/// a request is the template with its key and id written in, byte for byte what
/// `frame::encode` makes (checked at start), without cloning the value or serializing per
/// request — the RESP side formats its requests by hand too.
struct Templates {
    insert: Vec<u8>,
    insert_key_at: usize,
    retrieve: Vec<u8>,
    retrieve_key_at: usize,
}

impl Templates {
    fn new(epoch: Epoch, keys: &[Key], value: &[u8]) -> anyhow::Result<Option<Templates>> {
        let insert = |key: Key| {
            Message::Insert(Insert {
                epoch,
                key,
                value: value.to_vec(),
            })
        };
        let retrieve = |key: Key| Message::Retrieve(Retrieve { epoch, key });
        let (Some(k0), Some(k1)) = (keys.first(), keys.get(1)) else {
            return Ok(None);
        };
        let t = |m: &Message| -> anyhow::Result<(Vec<u8>, usize)> {
            let f = frame::encode_to_vec(0, m)?;
            let at = f
                .windows(32)
                .position(|w| w == k0.0)
                .context("key not found in the encoded request")?;
            Ok((f, at))
        };
        let (insert_frame, insert_key_at) = t(&insert(*k0))?;
        let (retrieve_frame, retrieve_key_at) = t(&retrieve(*k0))?;
        let tpl = Templates {
            insert: insert_frame,
            insert_key_at,
            retrieve: retrieve_frame,
            retrieve_key_at,
        };
        // The patched frame must be exactly what the encoder makes; if not, encode each time.
        for (ins, want) in [(true, insert(*k1)), (false, retrieve(*k1))] {
            let mut got = Vec::new();
            tpl.write(ins, k1, 7, &mut got);
            if got != frame::encode_to_vec(7, &want)? {
                return Ok(None);
            }
        }
        Ok(Some(tpl))
    }

    fn write(&self, insert: bool, key: &Key, id: u64, out: &mut Vec<u8>) {
        let (frame, at) = if insert {
            (&self.insert, self.insert_key_at)
        } else {
            (&self.retrieve, self.retrieve_key_at)
        };
        let start = out.len();
        out.extend_from_slice(frame);
        out[start + 8..start + HEADER_LEN].copy_from_slice(&id.to_le_bytes());
        out[start + at..start + at + 32].copy_from_slice(&key.0);
    }
}

impl Conn {
    async fn open(s: &Shared) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(&s.addr).await.context("connect")?;
        stream.set_nodelay(true)?;
        let mut c = Conn {
            stream,
            out: Vec::new(),
            inbuf: Vec::with_capacity(64 * 1024),
            start: 0,
            decoder: Decoder::new(),
            aligned: rkyv::util::AlignedVec::new(),
        };
        if s.proto == Proto::Tarn {
            let h = Hello {
                version: 1,
                network: NetworkId::from_name(&s.args.network),
                epoch_len_secs: 0,
            };
            frame::encode(0, &Message::Hello(h), &mut c.out)?;
            c.flush().await?;
            match c.next_tarn(s).await? {
                Message::HelloAck(_) => {}
                other => bail!("hello refused: {other:?}"),
            }
        }
        Ok(c)
    }

    fn send(&mut self, s: &Shared, insert: bool, key: Key, id: u64) -> anyhow::Result<()> {
        match s.proto {
            Proto::Tarn if s.templates.is_some() => {
                if let Some(t) = &s.templates {
                    t.write(insert, &key, id, &mut self.out);
                }
            }
            Proto::Tarn => {
                let m = if insert {
                    Message::Insert(Insert {
                        epoch: s.epoch,
                        key,
                        value: s.value.clone(),
                    })
                } else {
                    Message::Retrieve(Retrieve {
                        epoch: s.epoch,
                        key,
                    })
                };
                frame::encode(id, &m, &mut self.out)?;
            }
            Proto::Redis => {
                if insert {
                    self.out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$32\r\n");
                    self.out.extend_from_slice(&key.0);
                    self.out
                        .extend_from_slice(format!("\r\n${}\r\n", s.value.len()).as_bytes());
                    self.out.extend_from_slice(&s.value);
                    self.out.extend_from_slice(b"\r\n");
                } else {
                    self.out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$32\r\n");
                    self.out.extend_from_slice(&key.0);
                    self.out.extend_from_slice(b"\r\n");
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Reads more bytes. Cancel-safe (the open loop races it against its send timer): nothing
    /// is appended unless the read completed.
    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.start > 0 {
            self.inbuf.drain(..self.start);
            self.start = 0;
        }
        // Straight into the buffer's spare room: no scratch to zero and copy per read.
        self.inbuf.reserve(16 * 1024);
        let n = self.stream.read_buf(&mut self.inbuf).await?;
        if n == 0 {
            bail!("server closed the connection");
        }
        Ok(())
    }

    async fn next_tarn(&mut self, _s: &Shared) -> anyhow::Result<Message> {
        loop {
            if let Parsed::Frame(f) = frame::parse_frame(&self.inbuf[self.start..], 1 << 20)? {
                let len = f.wire_len();
                let m = self.decoder.decode(&f)?;
                self.start += len;
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// Receives one reply; returns whether it was a success and, for tarn, its request id.
    async fn recv(&mut self, s: &Shared) -> anyhow::Result<(bool, Option<u64>)> {
        match s.proto {
            Proto::Tarn => loop {
                if let Parsed::Frame(f) = frame::parse_frame(&self.inbuf[self.start..], 1 << 20)? {
                    let (id, len) = (f.header.request_id, f.wire_len());
                    let ok = reply_ok(&mut self.aligned, f.header.kind, f.body);
                    self.start += len;
                    return Ok((ok, Some(id)));
                }
                self.fill().await?;
            },
            Proto::Redis => loop {
                if let Some((ok, len)) = parse_resp(&self.inbuf[self.start..]) {
                    self.start += len;
                    return Ok((ok, None));
                }
                self.fill().await?;
            },
        }
    }
}

/// Whether a tarn reply says its request succeeded. The archive is validated in place (as the
/// client library's decoder does) but its values are not copied out: the RESP side only scans
/// its reply as well. Anything that does not validate counts as an error.
fn reply_ok(aligned: &mut rkyv::util::AlignedVec<16>, kind: u8, body: &[u8]) -> bool {
    aligned.clear();
    aligned.extend_from_slice(body);
    if kind == Kind::InsertReply as u8 {
        matches!(
            rkyv::access::<ArchivedInsertReply, rancor::Error>(aligned),
            Ok(ArchivedInsertReply::Stored { .. })
        )
    } else if kind == Kind::RetrieveReply as u8 {
        matches!(
            rkyv::access::<ArchivedRetrieveReply, rancor::Error>(aligned),
            Ok(ArchivedRetrieveReply::Found(_) | ArchivedRetrieveReply::NotFound)
        )
    } else {
        false
    }
}

/// One RESP reply at the start of `b`: (success, bytes) or None when incomplete.
fn parse_resp(b: &[u8]) -> Option<(bool, usize)> {
    let line_end = b.windows(2).position(|w| w == b"\r\n")?;
    match b.first()? {
        b'+' | b':' => Some((true, line_end + 2)),
        b'-' => Some((false, line_end + 2)),
        b'$' => {
            let n: i64 = std::str::from_utf8(&b[1..line_end]).ok()?.parse().ok()?;
            if n < 0 {
                return Some((true, line_end + 2));
            }
            let total = line_end + 2 + n as usize + 2;
            (b.len() >= total).then_some((true, total))
        }
        _ => Some((false, b.len())),
    }
}

/// Requests in flight and when each was sent (or, open loop, meant to be sent), oldest first.
/// Tarn replies carry request ids, so each latency is exact (tarnd may answer a read after the
/// requests that followed it, so the id is looked up — almost always at the front); Redis
/// answers in order.
#[derive(Default)]
struct InFlight {
    sent: std::collections::VecDeque<(u64, Instant)>,
}

impl InFlight {
    fn len(&self) -> usize {
        self.sent.len()
    }
    fn push(&mut self, id: u64, at: Instant) {
        self.sent.push_back((id, at));
    }
    fn take(&mut self, id: Option<u64>) -> Option<Instant> {
        let at = match id {
            None => 0,
            Some(id) => self.sent.iter().position(|(i, _)| *i == id)?,
        };
        self.sent.remove(at).map(|(_, t)| t)
    }
}

/// The `n`th fresh insert key of connection `conn` in the run with `nonce`.
fn fresh_key(nonce: u64, conn: u64, n: u64) -> Key {
    let mut h = blake3::Hasher::new();
    h.update(b"tarn-load fresh key");
    h.update(&nonce.to_le_bytes());
    h.update(&conn.to_le_bytes());
    h.update(&n.to_le_bytes());
    Key(*h.finalize().as_bytes())
}

async fn connection(s: Arc<Shared>, seed: u64) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut rng =
        rand::rngs::SmallRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed);
    let mut conn = Conn::open(&s).await?;
    let mut inflight = InFlight::default();
    let mut done = 0u64;
    let mut id = 1u64;
    let mut fresh = 0u64;
    let limit = s.args.count;
    // Open loop: this connection's share of the rate, first send staggered across connections.
    let interval = s
        .args
        .rate
        .map(|r| Duration::from_secs_f64(s.args.conns as f64 / r.max(1e-9)));
    let mut next_send = Instant::now()
        + interval.map_or(Duration::ZERO, |i| i.mul_f64((seed % 1000) as f64 / 1000.0));
    loop {
        let stopping = s.stop.load(Ordering::Relaxed);
        // Send what is due: closed loop, whenever there is room; open loop, on schedule.
        while !stopping && inflight.len() < s.args.pipeline {
            let intended = match interval {
                Some(iv) => {
                    if Instant::now() < next_send {
                        break;
                    }
                    let at = next_send;
                    next_send += iv;
                    at
                }
                None => Instant::now(),
            };
            if limit > 0 && s.issued.fetch_add(1, Ordering::Relaxed) >= limit {
                s.stop.store(true, Ordering::Relaxed);
                break;
            }
            let insert = rng.gen_range(0..100) < s.args.insert_pct;
            let key = if insert {
                fresh += 1;
                fresh_key(s.nonce, seed, fresh)
            } else {
                s.keys[rng.gen_range(0..s.keys.len())]
            };
            conn.send(&s, insert, key, id)?;
            inflight.push(id, intended);
            id += 1;
        }
        if inflight.len() == 0 {
            if s.stop.load(Ordering::Relaxed) {
                break;
            }
            if interval.is_some() {
                tokio::time::sleep_until(next_send.into()).await;
            }
            continue;
        }
        conn.flush().await?;
        let reply = match interval {
            Some(_) if !s.stop.load(Ordering::Relaxed) => {
                tokio::select! {
                    r = conn.recv(&s) => Some(r?),
                    _ = tokio::time::sleep_until(next_send.into()) => None,
                }
            }
            _ => Some(conn.recv(&s).await?),
        };
        let Some((ok, rid)) = reply else { continue };
        // A reply to no request in flight means the server and this run disagree on what was
        // asked: no figure of this connection can be trusted.
        let Some(t) = inflight.take(rid) else {
            bail!("a reply to no request in flight (id {rid:?})");
        };
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
        if !ok {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        done += 1;
    }
    Ok((hist, done))
}
