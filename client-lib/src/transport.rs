//! How a client reaches nodes and contacts, behind one trait: direct TCP here (tests and
//! private deployments, chosen explicitly), Tor (arti-client) in production.

use std::future::Future;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to a node or a contact.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A way to reach nodes and contacts, and to be reached.
pub trait Transport: Send + Sync + 'static {
    /// Streams this transport yields.
    type Conn: Stream;
    /// Accepts incoming contact connections.
    type Listener: Listener<Conn = Self::Conn>;

    /// Dials a node (`host:port`). Over Tor each node gets its own stream isolation.
    fn dial_node(&self, addr: &str) -> impl Future<Output = io::Result<Self::Conn>> + Send;

    /// Dials a contact at the contact info it published.
    fn dial_contact(
        &self,
        contact_info: &str,
    ) -> impl Future<Output = io::Result<Self::Conn>> + Send;

    /// Starts listening for contacts; returns the listener and the contact info to publish.
    fn listen(&self) -> impl Future<Output = io::Result<(Self::Listener, String)>> + Send;
}

/// Incoming contact connections.
pub trait Listener: Send + 'static {
    /// Streams accepted.
    type Conn: Stream;
    /// The next incoming connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
}

/// Plain TCP: nodes and contacts by `host:port`. It reveals the client's address to everyone
/// it talks to — for tests and private deployments only, never chosen silently.
#[derive(Clone, Debug)]
pub struct DirectTcp {
    /// Where to listen for contacts (port 0 picks one).
    pub listen_addr: String,
}

impl Default for DirectTcp {
    fn default() -> DirectTcp {
        DirectTcp {
            listen_addr: "127.0.0.1:0".into(),
        }
    }
}

/// A TCP listener for [`DirectTcp`].
#[derive(Debug)]
pub struct TcpContacts(tokio::net::TcpListener);

impl Listener for TcpContacts {
    type Conn = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<tokio::net::TcpStream> {
        let (s, _) = self.0.accept().await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

impl Transport for DirectTcp {
    type Conn = tokio::net::TcpStream;
    type Listener = TcpContacts;

    async fn dial_node(&self, addr: &str) -> io::Result<tokio::net::TcpStream> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    async fn dial_contact(&self, contact_info: &str) -> io::Result<tokio::net::TcpStream> {
        self.dial_node(contact_info).await
    }

    async fn listen(&self) -> io::Result<(TcpContacts, String)> {
        let l = tokio::net::TcpListener::bind(&self.listen_addr).await?;
        let addr = l.local_addr()?.to_string();
        Ok((TcpContacts(l), addr))
    }
}

/// Writes one length-prefixed message (u16 big-endian length, then the bytes).
pub async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message too long"))?;
    let mut buf = Vec::with_capacity(2 + msg.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(msg);
    w.write_all(&buf).await?;
    // Streams that buffer (Tor's cells) send on flush.
    w.flush().await
}

/// Reads one length-prefixed message.
pub async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    r.read_exact(&mut msg).await?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::session::{initiate, respond, ReplayGuard, SessionMessage, Status};

    #[tokio::test]
    async fn a_session_runs_over_direct_tcp() {
        let (a, b) = (
            Identity::from_secrets("alice", [1; 32], [2; 32]),
            Identity::from_secrets("bob", [3; 32], [4; 32]),
        );
        let t = DirectTcp::default();
        let (mut listener, bob_addr) = t.listen().await.unwrap();
        let a_card = a.card();
        let bob = tokio::spawn(async move {
            let mut s = listener.accept().await.unwrap();
            let m1 = read_msg(&mut s).await.unwrap();
            let (mut sess, m2) =
                respond(&b, &[a_card], &m1, 1000, &mut ReplayGuard::default()).unwrap();
            write_msg(&mut s, &m2).await.unwrap();
            let ct = read_msg(&mut s).await.unwrap();
            sess.open(&ct).unwrap()
        });
        let mut s = t.dial_contact(&bob_addr).await.unwrap();
        let (pending, m1) = initiate(
            &a,
            &Identity::from_secrets("bob", [3; 32], [4; 32]).card(),
            1000,
        )
        .unwrap();
        write_msg(&mut s, &m1).await.unwrap();
        let m2 = read_msg(&mut s).await.unwrap();
        let mut sess = pending
            .finish(&Identity::from_secrets("bob", [3; 32], [4; 32]).card(), &m2)
            .unwrap();
        let ct = sess
            .seal(&SessionMessage::NotifyStatus(Status::Brb), 7)
            .unwrap();
        write_msg(&mut s, &ct).await.unwrap();
        assert_eq!(
            bob.await.unwrap(),
            Some((7, SessionMessage::NotifyStatus(Status::Brb)))
        );
    }
}
