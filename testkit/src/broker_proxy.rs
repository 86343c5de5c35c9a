//! A TCP proxy in front of the broker that tests break on purpose.

use std::sync::{Arc, Mutex};

use crate::amqp_url::AmqpUrl;

/// A TCP proxy in front of the broker that a test can break in the two ways
/// a network does: [`BrokerProxy::cut`] closes every connection and drops
/// new ones (the client sees errors at once); [`BrokerProxy::freeze`] keeps
/// every connection open but forwards nothing (a black hole: the client
/// only notices by its own timeouts). [`BrokerProxy::restore`] forwards
/// again.
pub struct BrokerProxy {
    pub addr: std::net::SocketAddr,
    state: tokio::sync::watch::Sender<ProxyState>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyState {
    Open,
    Cut,
    Frozen,
}

impl BrokerProxy {
    /// Listens on a free local port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the broker proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (state, _) = tokio::sync::watch::channel(ProxyState::Open);
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Default::default();
        let accept = {
            let (state, conns) = (state.clone(), conns.clone());
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if *state.borrow() == ProxyState::Cut {
                        continue; // dropped: the client sees the connection close
                    }
                    let upstream = upstream.clone();
                    let state = state.subscribe();
                    let task = tokio::spawn(async move {
                        if let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await {
                            let (ri, wi) = inbound.into_split();
                            let (ro, wo) = outbound.into_split();
                            tokio::select! {
                                () = pipe(ri, wo, state.clone()) => {}
                                () = pipe(ro, wi, state) => {}
                            }
                        }
                    });
                    conns.lock().unwrap().push(task.abort_handle());
                }
            })
        };
        Self {
            addr,
            state,
            conns,
            accept,
        }
    }

    /// Closes every connection and drops new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.state.send_replace(ProxyState::Cut);
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    /// Stops forwarding bytes, connections stay open, until [`Self::restore`].
    pub fn freeze(&self) {
        self.state.send_replace(ProxyState::Frozen);
    }

    pub fn restore(&self) {
        self.state.send_replace(ProxyState::Open);
    }

    /// `url` (`amqp://user:pass@host:port/vhost`) pointing at this proxy.
    pub fn url(&self, url: &str) -> String {
        AmqpUrl::parse(url)
            .expect("an AMQP URL")
            .with_authority(self.addr)
    }
}

/// Copies `from` to `to` while the proxy is open; holds the bytes while it
/// is frozen.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: tokio::sync::watch::Receiver<ProxyState>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if state.wait_for(|s| *s == ProxyState::Open).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for BrokerProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
