//! Client sockets, waited for through one epoll set per core.
//!
//! glommio waits for a socket with a one-shot io_uring poll: armed again for every read,
//! completed by task work on the core's thread, and turned into a task wake — about a
//! microsecond per request at 50 connections × pipeline 1, where redis-server pays for one
//! `epoll_wait` per loop turn over all its clients (BENCHMARKS.md, "Sixth round"). Here every
//! client socket is registered once, edge-triggered, in its core's epoll set ([`Poller`]); the
//! core's poller task waits for the set itself through glommio (one poll per batch of ready
//! sockets), reads the batch with one `epoll_wait`, and wakes the connections it names through
//! their [`Ready`]. Reads and writes are plain non-blocking `recv`/`send`.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::task::{Poll, Waker};

use rustix::buffer::spare_capacity;
use rustix::event::{epoll, Timespec};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

/// Events read from the set per `epoll_wait` (more stay queued for the next one).
const BATCH: usize = 256;

/// One core's epoll set of client sockets.
#[derive(Debug)]
pub struct Poller {
    set: OwnedFd,
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        Ok(Poller {
            set: epoll::create(epoll::CreateFlags::CLOEXEC)?,
        })
    }

    /// Registers `sock` (non-blocking) under `token`, for as long as it is open or until
    /// [`Poller::remove`].
    pub fn add(&self, sock: &TcpStream, token: u64) -> io::Result<()> {
        use epoll::EventFlags as F;
        epoll::add(
            &self.set,
            sock,
            epoll::EventData::new_u64(token),
            F::IN | F::OUT | F::RDHUP | F::ET,
        )?;
        Ok(())
    }

    /// Takes `sock` out of the set (it is handed to glommio, which waits for it its own way).
    pub fn remove(&self, sock: &TcpStream) -> io::Result<()> {
        epoll::delete(&self.set, sock)?;
        Ok(())
    }

    /// Waits until sockets in the set are ready, then passes each one's token and events to
    /// `seen` (at most 256; the rest are seen on the next call). `events` is scratch
    /// space the caller keeps between calls.
    pub async fn next(
        &self,
        events: &mut Vec<epoll::Event>,
        mut seen: impl FnMut(u64, epoll::EventFlags),
    ) -> io::Result<()> {
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            glommio::net::wait_readable(self.set.as_raw_fd()).await?;
            events.clear();
            events.reserve(BATCH);
            match epoll::wait(&self.set, spare_capacity(events), Some(&zero)) {
                Ok(0) | Err(Errno::INTR) => continue,
                Ok(_) => {
                    for e in events.iter() {
                        seen(e.data.u64(), e.flags);
                    }
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// What the poller last saw of one socket, and the task waiting for it. A flag is cleared
/// only when the socket said it would block, or when a read came back short on a socket not
/// yet closed by its peer (edge-triggered, the next arrival is a new event), so no event is
/// lost between a read and the wait after it. A short read does not mean "drained" once the
/// peer has closed or reset: TCP stops a read at the FIN and reports a reset on the next call,
/// and that FIN or reset may have come with the event the read used up — so after a hang-up
/// the socket is read until it says so. (Urgent data also shortens a read; a client that
/// sends it may wait until its deadline, which the watcher enforces.)
pub struct Ready {
    readable: Cell<bool>,
    writable: Cell<bool>,
    /// The peer hung up, reset, or the socket was shut down: reads never wait again.
    closed: Cell<bool>,
    /// Set by [`Ready::nudge`]: the next read returns `Interrupted` instead of waiting.
    nudged: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready")
            .field("readable", &self.readable.get())
            .field("writable", &self.writable.get())
            .field("closed", &self.closed.get())
            .finish_non_exhaustive()
    }
}

impl Default for Ready {
    fn default() -> Ready {
        Ready {
            readable: Cell::new(true),
            writable: Cell::new(true),
            closed: Cell::new(false),
            nudged: Cell::new(false),
            waker: Cell::new(None),
        }
    }
}

impl Ready {
    /// Records an event from the set and wakes the task waiting on the socket, if any.
    pub fn event(&self, flags: epoll::EventFlags) {
        use epoll::EventFlags as F;
        if flags.intersects(F::RDHUP | F::HUP | F::ERR) {
            self.closed.set(true);
        }
        if flags.intersects(F::IN | F::RDHUP | F::HUP | F::ERR) {
            self.readable.set(true);
        }
        if flags.intersects(F::OUT | F::HUP | F::ERR) {
            self.writable.set(true);
        }
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Interrupts the owner's read (or the next one): it returns `ErrorKind::Interrupted`, so
    /// the owner can see to something else its socket waits for (replies left to write).
    pub fn nudge(&self) {
        self.nudged.set(true);
        self.wake();
    }

    fn wait<'a>(&'a self, flag: &'a Cell<bool>) -> impl Future<Output = ()> + 'a {
        self.wait_until(move || flag.get())
    }

    fn wait_until<'a>(&'a self, done: impl Fn() -> bool + 'a) -> impl Future<Output = ()> + 'a {
        poll_fn(move |cx| {
            if done() {
                return Poll::Ready(());
            }
            let waker = match self.waker.take() {
                Some(w) if w.will_wake(cx.waker()) => w,
                _ => cx.waker().clone(),
            };
            self.waker.set(Some(waker));
            Poll::Pending
        })
    }

    /// Reads what `sock` has, up to `buf.len()`, waiting until it has something; `Ok(0)` at
    /// the end of the stream, `ErrorKind::Interrupted` (nothing read) after a [`Ready::nudge`].
    pub async fn read(&self, sock: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.nudged.replace(false) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            if self.readable.get() {
                match rustix::net::recv(sock, &mut *buf, RecvFlags::DONTWAIT) {
                    Ok((n, _)) => {
                        if n > 0 && n < buf.len() && !self.closed.get() {
                            self.readable.set(false);
                        }
                        return Ok(n);
                    }
                    Err(Errno::AGAIN) => self.readable.set(false),
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
                continue;
            }
            self.wait_until(|| self.readable.get() || self.nudged.get())
                .await;
        }
    }

    /// Writes what `sock` takes of `buf` now, without waiting: the bytes written (fewer than
    /// `buf.len()` when its send buffer is full).
    pub fn write_now(&self, sock: impl AsFd, buf: &[u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() && self.writable.get() {
            match rustix::net::send(&sock, &buf[n..], SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => n += k,
                Err(Errno::AGAIN) => self.writable.set(false),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }

    /// Writes all of `buf` to `sock`, waiting for room as often as it takes.
    pub async fn write_all(&self, sock: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
        loop {
            buf = &buf[self.write_now(sock, buf)?..];
            if buf.is_empty() {
                return Ok(());
            }
            self.wait(&self.writable).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::rc::Rc;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (server, client)
    }

    #[test]
    fn a_nudge_interrupts_a_waiting_read_once_and_data_still_arrives() {
        glommio::LocalExecutor::default().run(async {
            let (server, mut client) = pair();
            let server = Rc::new(server);
            let ready = Rc::new(Ready::default());
            let reader = glommio::spawn_local({
                let (server, ready) = (server.clone(), ready.clone());
                async move {
                    let mut buf = [0u8; 16];
                    let first = ready.read(&server, &mut buf).await;
                    let second = ready.read(&server, &mut buf).await;
                    (
                        first.map_err(|e| e.kind()),
                        second.map_err(|e| e.kind()),
                        buf[0],
                    )
                }
            });
            // The reader finds nothing and waits; the nudge ends that wait without data.
            glommio::yield_if_needed().await;
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            ready.nudge();
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            // The next read waits again, for data this time (the poller's event, by hand).
            client.write_all(b"x").unwrap();
            ready.event(epoll::EventFlags::IN);
            let (first, second, byte) = reader.await;
            assert_eq!(first, Err(io::ErrorKind::Interrupted));
            assert_eq!(second, Ok(1));
            assert_eq!(byte, b'x');
        });
    }

    #[test]
    fn write_now_takes_what_fits_and_does_not_wait() {
        glommio::LocalExecutor::default().run(async {
            let (server, _client) = pair();
            let ready = Ready::default();
            // Far more than both socket buffers hold, with nobody reading.
            let big = vec![7u8; 64 << 20];
            let n = ready.write_now(&server, &big).unwrap();
            assert!(n > 0 && n < big.len(), "wrote {n}");
            assert!(!ready.writable.get(), "a full socket is marked so");
            assert_eq!(ready.write_now(&server, &big).unwrap(), 0);
        });
    }
}
