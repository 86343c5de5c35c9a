//! TLS for every ordermesh socket, on rustls with the ring provider (the one
//! lapin's `rustls--ring` and tonic's `tls-ring` use: one rustls, no aws-lc).
//!
//! - Listeners: with `TLS_CERT_FILE` and `TLS_KEY_FILE` (PEM) set,
//!   [`ServerTls::from_env`] loads the certificate chain and key; the gRPC
//!   port ([`crate::grpc::serve`]) and the relay's admin port then accept
//!   only TLS, offering ALPN `h2` and `http/1.1` so gRPC clients, curl,
//!   Prometheus and browsers all connect. [`TlsIncoming`] runs each
//!   handshake in a task of its own, bounded by [`HANDSHAKE_TIMEOUT`], so a
//!   slow or silent client delays nobody else.
//! - Clients: [`client_config`] checks the server's certificate fully, only
//!   its chain, or not at all ([`Verify`], which PostgreSQL's `sslmode`
//!   selects: see [`crate::db`]), against the system roots plus an optional
//!   private CA ([`roots`]).
//! - RabbitMQ: `amqps://` URLs are lapin's own; `ordermesh_messaging`
//!   adds the private CA of `AMQP_CA_FILE` with [`read_certs`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::config::{ConfigError, Env, invalid};

/// PEM certificate chain of the listeners (server certificate first).
pub const ENV_CERT_FILE: &str = "TLS_CERT_FILE";
/// PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate.
pub const ENV_KEY_FILE: &str = "TLS_KEY_FILE";
/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Protocols the listeners offer, preferred first.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The ring provider. It is also installed as the process default, for
/// code that builds its rustls configs without naming one (lapin's
/// connector does).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            // Err: a default is installed already, which is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
            Arc::new(rustls::crypto::ring::default_provider())
        })
        .clone()
}

/// Reads the PEM certificates of `path`, named by `var` in errors.
pub fn read_certs(var: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = std::fs::read(path).map_err(|e| invalid(var, path, format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(var, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            var,
            path,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
        ));
    }
    Ok(certs)
}

/// Reads the first PEM private key of `path`, named by `var` in errors.
pub fn read_key(var: &str, path: &str) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = std::fs::read(path).map_err(|e| invalid(var, path, format!("cannot read: {e}")))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => invalid(
            var,
            path,
            "no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file",
        ),
        e => invalid(var, path, format!("not a PEM private key file: {e}")),
    })
}

/// A listener certificate and key, ready to accept TLS. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    /// For logs: which certificate is served.
    cert_file: String,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// `TLS_CERT_FILE` and `TLS_KEY_FILE`: both set (TLS), or neither
    /// (`None`: plaintext). One without the other, or a file that does not
    /// load, is an error naming the variable.
    pub fn from_env(env: &impl Env) -> Result<Option<Self>, ConfigError> {
        let cert = crate::config::string(env, ENV_CERT_FILE, "");
        let key = crate::config::string(env, ENV_KEY_FILE, "");
        match (cert.is_empty(), key.is_empty()) {
            (true, true) => Ok(None),
            (false, true) => Err(invalid(
                ENV_KEY_FILE,
                "",
                format!("must be set when {ENV_CERT_FILE} is (TLS needs both, plaintext neither)"),
            )),
            (true, false) => Err(invalid(
                ENV_CERT_FILE,
                "",
                format!("must be set when {ENV_KEY_FILE} is (TLS needs both, plaintext neither)"),
            )),
            (false, false) => Self::from_pem_files(&cert, &key).map(Some),
        }
    }

    /// Loads a PEM certificate chain and its private key.
    pub fn from_pem_files(cert_file: &str, key_file: &str) -> Result<Self, ConfigError> {
        let certs = read_certs(ENV_CERT_FILE, cert_file)?;
        let key = read_key(ENV_KEY_FILE, key_file)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(ENV_CERT_FILE, cert_file, e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(_) => invalid(
                    ENV_CERT_FILE,
                    cert_file,
                    format!("not a usable certificate: {e}"),
                ),
                rustls::Error::InconsistentKeys(_) => invalid(
                    ENV_KEY_FILE,
                    key_file,
                    format!("is not the key of the certificate in {ENV_CERT_FILE}={cert_file}"),
                ),
                e => invalid(ENV_KEY_FILE, key_file, format!("not a usable key: {e}")),
            })?;
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        Ok(Self {
            config: Arc::new(config),
            cert_file: cert_file.to_owned(),
        })
    }

    /// The rustls configuration (ALPN `h2`, `http/1.1`).
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// Connections of `listener` after their TLS handshake, as a stream (for
/// tonic's `serve_with_incoming`) or an [`axum::serve::Listener`]. Clients
/// that fail the handshake (plaintext ones among them) are dropped and
/// logged at debug level. Dropping it closes the listener.
pub struct TlsIncoming {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsIncoming {
    pub fn new(listener: TcpListener, tls: &ServerTls) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(accept_loop(listener, tls.acceptor(), tx));
        Ok(Self {
            ready,
            local_addr,
            accepting,
        })
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => crate::grpc::accepted(accepted).await,
            () = ready.closed() => return,
        };
        let Some((tcp, peer)) = accepted else {
            continue;
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl futures::Stream for TlsIncoming {
    type Item = io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.ready
            .poll_recv(cx)
            .map(|next| next.map(|(stream, _)| Ok(stream)))
    }
}

impl axum::serve::Listener for TlsIncoming {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop only ends when this is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// How a client checks the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt, check nothing (PostgreSQL `sslmode=prefer` and `require`).
    Nothing,
    /// The chain must lead to a trusted root; any host name (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`, and every HTTPS client).
    Full,
}

/// The system's trusted roots plus `extra` (a private CA).
pub fn roots(extra: &[CertificateDer<'static>]) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system root certificate did not load");
    }
    roots.add_parsable_certificates(native.certs);
    roots.add_parsable_certificates(extra.iter().cloned());
    roots
}

/// A client configuration that checks the server as `verify` says, against
/// `roots` (unused for [`Verify::Nothing`]).
pub fn client_config(
    verify: Verify,
    roots: RootCertStore,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match verify {
        Verify::Full => builder.with_root_certificates(roots),
        Verify::Chain => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
        }
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
    };
    Ok(config.with_no_client_auth())
}

/// Accepts any certificate, but still checks that the server holds its key
/// (the handshake signature), as libpq's `sslmode=require` does.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The full WebPKI check except the host name (libpq's `verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The rustls error inside `error`'s chain, if a TLS failure caused it
/// (tokio-rustls wraps it in an `io::Error`, whose `source` skips it).
pub fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "om-tls-unit-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn no_variables_means_plaintext() {
        assert!(ServerTls::from_env(&env(&[])).unwrap().is_none());
        assert!(
            ServerTls::from_env(&env(&[(ENV_CERT_FILE, " "), (ENV_KEY_FILE, "")]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn one_variable_without_the_other_names_the_missing_one() {
        let err = ServerTls::from_env(&env(&[(ENV_CERT_FILE, "/x.pem")])).unwrap_err();
        assert_eq!(err.name, ENV_KEY_FILE, "{err}");
        let err = ServerTls::from_env(&env(&[(ENV_KEY_FILE, "/x.key")])).unwrap_err();
        assert_eq!(err.name, ENV_CERT_FILE, "{err}");
    }

    #[test]
    fn a_missing_file_names_the_variable_and_the_path() {
        let err = ServerTls::from_env(&env(&[
            (ENV_CERT_FILE, "/nonexistent/cert.pem"),
            (ENV_KEY_FILE, "/nonexistent/key.pem"),
        ]))
        .unwrap_err();
        assert_eq!(err.name, ENV_CERT_FILE);
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }

    #[test]
    fn a_file_without_pem_is_rejected() {
        let garbage = temp_file("cert.pem", "not a certificate\n");
        let path = garbage.to_str().unwrap();
        let err = read_certs(ENV_CERT_FILE, path).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = read_key(ENV_KEY_FILE, path).unwrap_err();
        assert!(err.to_string().contains("no PEM private key"), "{err}");
    }
}
