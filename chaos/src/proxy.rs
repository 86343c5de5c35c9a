//! A TCP proxy in front of RabbitMQ that can drop every connection at once.
//! The binaries' `AMQP_URL` points here; [`Proxy::cut`] resets all open
//! connections (RST both ways, as when a network path dies), and the
//! clients see their broker connection fail mid-publish, mid-confirm or
//! mid-ack. New connections are forwarded again right away.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

struct Shared {
    /// Cancelled (and replaced) by a cut: every connection accepted under it
    /// is dropped.
    generation: Mutex<CancellationToken>,
    /// Connections currently forwarded.
    open: AtomicUsize,
}

impl Proxy {
    /// Listens on a free local port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the broker proxy")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            generation: Mutex::new(CancellationToken::new()),
            open: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection; returns how many there were.
    pub fn cut(&self) -> usize {
        let old = std::mem::take(&mut *self.shared.generation.lock().expect("proxy lock"));
        let open = self.shared.open.load(Ordering::SeqCst);
        old.cancel();
        open
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        let token = shared.generation.lock().expect("proxy lock").clone();
        tokio::spawn(forward(inbound, upstream.clone(), token, shared.clone()));
    }
}

/// Decrements the open count however a forwarding task ends.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn forward(
    mut inbound: TcpStream,
    upstream: String,
    token: CancellationToken,
    shared: Arc<Shared>,
) {
    // Unreachable upstream: dropping `inbound` closes it, and the client
    // retries as it would against a dead broker.
    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    shared.open.fetch_add(1, Ordering::SeqCst);
    let _open = Open(shared);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        () = token.cancelled() => {
            // RST rather than FIN: no orderly AMQP close reaches either side.
            let _ = inbound.set_zero_linger();
            let _ = outbound.set_zero_linger();
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn forwards_and_cuts() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = Proxy::start(echo_addr.to_string()).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        assert_eq!(proxy.cut(), 1);
        // The cut connection is dead: the read ends (reset or EOF).
        let mut rest = [0u8; 4];
        let read = client.read(&mut rest).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

        // A new connection works again.
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        again.write_all(b"pong").await.unwrap();
        again.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }
}
