//! The machine's limit for tarn's framing: a minimal single-threaded epoll server (mio, not the
//! tarnd stack) that reads frames and answers each with a fixed reply — HELLO_ACK to a hello,
//! `Stored` to an insert, the start-up time to TIME_SYNC, a 300-byte `Found` to anything else — without storing or even decoding
//! anything beyond the header. tarn-load against it measures what framing, syscalls and the
//! loopback cost on this machine; tarnd is reported as a fraction of it.
//!
//! `limit-server --listen 127.0.0.1:7499` prints `limit-server ready listen=ADDR` and serves
//! until killed.

use std::collections::HashMap;
use std::io::{Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use tarn_proto::frame::{self, Parsed, HEADER_LEN};
use tarn_proto::msg::{HelloAck, InsertReply, Kind, NetworkId, RetrieveReply};
use tarn_proto::{Id, Message};

const LISTENER: Token = Token(0);

struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
}

fn template(msg: &Message) -> Vec<u8> {
    frame::encode_to_vec(0, msg).expect("encodes")
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:7499".into());
    let network = args
        .iter()
        .position(|a| a == "--network")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "tarn-dev".into());
    let hello = template(&Message::HelloAck(HelloAck {
        version: tarn_proto::PROTOCOL_VERSION,
        network: NetworkId::from_name(&network),
        epoch_len_secs: 3600,
        node_id: Id([0; 32]),
        public_key: [0; 32],
        max_frame_bytes: frame::DEFAULT_MAX_BODY,
    }));
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let time = template(&Message::TimeReply(tarn_proto::msg::TimeReply {
        unix_ns: now_ns,
        uncertainty_ns: 0,
        epoch_len_secs: 3600,
        ntp_synced: false,
    }));
    let stored = template(&Message::InsertReply(InsertReply::Stored { copies: 1 }));
    let found = template(&Message::RetrieveReply(RetrieveReply::Found(vec![
        vec![0xab; 300],
    ])));

    let mut poll = Poll::new()?;
    let mut listener =
        TcpListener::bind(listen.parse().map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "--listen IP:PORT")
        })?)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("limit-server ready listen={}", listener.local_addr()?);
    let _ = std::io::stdout().flush();
    let mut conns: HashMap<Token, Conn> = HashMap::new();
    let mut next = 1usize;
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        poll.poll(&mut events, None)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    let _ = stream.set_nodelay(true);
                    let t = Token(next);
                    next += 1;
                    poll.registry()
                        .register(&mut stream, t, Interest::READABLE)?;
                    conns.insert(
                        t,
                        Conn {
                            stream,
                            inbuf: Vec::with_capacity(64 * 1024),
                            out: Vec::with_capacity(64 * 1024),
                        },
                    );
                }
                continue;
            }
            let t = ev.token();
            let Some(c) = conns.get_mut(&t) else { continue };
            let mut closed = false;
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => c.inbuf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            let mut used = 0;
            while let Ok(Parsed::Frame(f)) = frame::parse_frame(&c.inbuf[used..], 1 << 20) {
                let reply = match Kind::from_u8(f.header.kind) {
                    Some(Kind::Hello) => &hello,
                    Some(Kind::Insert) => &stored,
                    Some(Kind::TimeSync) => &time,
                    _ => &found,
                };
                let at = c.out.len();
                c.out.extend_from_slice(reply);
                c.out[at + 8..at + HEADER_LEN].copy_from_slice(&f.header.request_id.to_le_bytes());
                used += f.wire_len();
            }
            c.inbuf.drain(..used);
            // Replies are small and the client reads them; a blocking-style write loop is fine
            // for a measurement tool (a would-block spins briefly).
            let mut off = 0;
            while off < c.out.len() && !closed {
                match c.stream.write(&c.out[off..]) {
                    Ok(n) => off += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::yield_now()
                    }
                    Err(_) => closed = true,
                }
            }
            c.out.clear();
            if closed {
                if let Some(mut c) = conns.remove(&t) {
                    let _ = poll.registry().deregister(&mut c.stream);
                }
            }
        }
    }
}
