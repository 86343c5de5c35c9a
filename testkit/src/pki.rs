//! Certificates made at test time, so no key is ever
//! checked in: a throw-away CA and a server certificate it signed.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use ordermesh_runtime::tls::{ENV_CERT_FILE, ENV_KEY_FILE, ServerTls, Verify};

/// A CA and a server certificate for `localhost` and `127.0.0.1`, as PEM
/// files in a fresh directory that is removed on drop.
pub struct TestPki {
    pub dir: PathBuf,
    /// The CA certificate clients trust (`grpcurl -cacert`, `curl --cacert`).
    pub ca_file: PathBuf,
    /// The server's certificate followed by the CA's (`TLS_CERT_FILE`).
    pub cert_file: PathBuf,
    /// The server's PKCS#8 key (`TLS_KEY_FILE`).
    pub key_file: PathBuf,
    pub ca_pem: String,
}

impl TestPki {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "om-test-tls-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ordermesh test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");

        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &ca).expect("server certificate");

        let ca_pem = ca.pem();
        let ca_file = dir.join("ca.pem");
        let cert_file = dir.join("server.pem");
        let key_file = dir.join("server.key");
        std::fs::write(&ca_file, &ca_pem).expect("write ca.pem");
        std::fs::write(&cert_file, format!("{}{}", cert.pem(), ca_pem)).expect("write server.pem");
        std::fs::write(&key_file, key.serialize_pem()).expect("write server.key");
        Self {
            dir,
            ca_file,
            cert_file,
            key_file,
            ca_pem,
        }
    }

    /// `TLS_CERT_FILE` and `TLS_KEY_FILE` for a service's environment.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            (ENV_CERT_FILE, self.cert_file.display().to_string()),
            (ENV_KEY_FILE, self.key_file.display().to_string()),
        ]
    }

    pub fn server_tls(&self) -> ServerTls {
        ServerTls::from_pem_files(
            self.cert_file.to_str().expect("UTF-8 path"),
            self.key_file.to_str().expect("UTF-8 path"),
        )
        .expect("the test certificate loads")
    }

    /// A client trusting this CA only, checking host names, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        let mut config =
            ordermesh_runtime::tls::client_config(Verify::Full, roots).expect("client config");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
