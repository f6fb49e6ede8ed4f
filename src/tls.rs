//! TLS: `https://` targets (the client, the pre-flight wait and `--server-metrics`) and
//! `parley sim --tls-cert/--tls-key`.
//!
//! rustls with its `ring` provider (it builds from crates.io alone), Mozilla's roots bundled
//! (webpki-roots: no system store is read, so a run verifies the same on every host), plus
//! `--ca-cert FILE`'s certificates; `--insecure` skips verification. Every connection offers ALPN
//! `http/1.1` only and sends SNI with the URL's host name (an IP literal sends none and is
//! verified against the certificate's IP addresses, as RFC 6066 asks).
//!
//! The engine's connections are `HyperIo<TlsStream<StampedTcp>>` ([`crate::net`]): the TLS
//! session sits between the stamping socket and hyper, so every event's time is still the time
//! its bytes were read from the socket, not when rustls decrypted them.
//!
//! [`TlsClient`] is built once by the resources (where a bad `--ca-cert` is found, before any
//! traffic); each engine core then makes its own `ClientConfig` from it ([`TlsClient::config`]),
//! so the session-resumption cache a reconnect draws on is that core's alone and no lock is
//! shared between cores. Only the certificate verifier, immutable, is shared.

use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
    ServerConfig, SignatureScheme, StreamOwned,
};

pub use futures_rustls::TlsConnector;

/// The only ALPN protocol parley speaks.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// TLS 1.3 resumption tickets and TLS 1.2 sessions each core keeps (rustls's in-memory store:
/// this many server names, a few tickets each). A core talks to at most a handful of servers.
const RESUMPTION_SERVER_NAMES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file that cannot be used: the flag, the file and what is wrong.
    #[error("--{flag} {}: {reason}", path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// A valid file that rustls still refuses (e.g. a key that does not match the certificate).
    #[error("{0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file, or an error naming the file and what is wrong with it.
fn read_certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    // Read first, so an unreadable file says so (rustls's PEM errors do not carry the path).
    let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut certs = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(&text).enumerate() {
        certs.push(item.map_err(|e| err(format!("certificate {}: {e}", i + 1)))?);
    }
    if certs.is_empty() {
        return Err(err(
            "no PEM certificate in it (expected one or more `-----BEGIN CERTIFICATE-----` blocks; \
             a DER file can be converted with `openssl x509 -inform der`)"
                .into(),
        ));
    }
    Ok(certs)
}

/// The client side of a run's https targets (see the module docs).
#[derive(Debug)]
pub struct TlsClient {
    /// Every setting but the resumption store, which [`TlsClient::config`] makes per core.
    template: ClientConfig,
    insecure: bool,
}

impl TlsClient {
    /// Verification against the bundled roots plus `ca_cert`'s certificates (PEM, one or more),
    /// or none at all with `insecure`. A file that cannot be read, holds no certificate or holds
    /// one that is not a usable CA certificate is an error naming it.
    pub fn load(ca_cert: Option<&Path>, insecure: bool) -> Result<TlsClient, TlsError> {
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = if insecure {
            Arc::new(NoVerification(provider.clone()))
        } else {
            let mut roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            if let Some(path) = ca_cert {
                for (i, cert) in read_certs("ca-cert", path)?.into_iter().enumerate() {
                    roots.add(cert).map_err(|e| TlsError::File {
                        flag: "ca-cert",
                        path: path.to_path_buf(),
                        reason: format!(
                            "certificate {} is not a usable CA certificate: {e}",
                            i + 1
                        ),
                    })?;
                }
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsError::Config(format!("certificate verifier: {e}")))?
        };
        let mut template = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        template.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(TlsClient { template, insecure })
    }

    /// A `ClientConfig` of its own for one executor: the same settings, and a fresh session
    /// store, so resumption on that core touches nothing another core uses.
    pub fn config(&self) -> Arc<ClientConfig> {
        let mut config = self.template.clone();
        config.resumption = Resumption::in_memory_sessions(RESUMPTION_SERVER_NAMES);
        Arc::new(config)
    }

    /// `--insecure`: certificates are not verified.
    pub fn insecure(&self) -> bool {
        self.insecure
    }
}

/// What an https endpoint connects with: the run's [`TlsClient`] and the name to ask for (SNI)
/// and verify.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    pub client: Arc<TlsClient>,
    pub server_name: ServerName<'static>,
}

impl TlsTarget {
    /// `host` as a URL gives it (IPv6 without brackets): a DNS name, or an IP address, which is
    /// then verified against the certificate's IP addresses and sent without SNI.
    pub fn new(client: Arc<TlsClient>, host: &str) -> Result<TlsTarget, String> {
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("`{host}` is not a valid TLS server name"))?;
        Ok(TlsTarget {
            client,
            server_name,
        })
    }
}

/// `--insecure`: any certificate, any name. The handshake's signatures are still checked (they
/// prove the peer holds the key of the certificate it sent, which costs nothing to keep).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
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

/// What a failed handshake's error says, with a hint where the fix is parley's to name.
pub(crate) fn describe(e: &io::Error) -> String {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                "the server closed the connection during the TLS handshake (is it serving \
                 TLS on this port?)"
                    .into()
            }
            _ => format!("TLS handshake: {e}"),
        };
    };
    let text = tls.to_string();
    let hint = match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            " (the server's certificate is not signed by a bundled root: pass its CA with \
             --ca-cert FILE, or --insecure to skip verification)"
        }
        // webpki's error, inside rustls's `Other`: only its name says which.
        rustls::Error::InvalidCertificate(CertificateError::Other(_))
            if text.contains("CaUsedAsEndEntity") =>
        {
            " (the server presents a CA certificate as its own, e.g. a self-signed one made by \
             `openssl req -x509` without `-addext basicConstraints=critical,CA:FALSE`: sign a \
             server certificate with that CA and pass the CA with --ca-cert, or use --insecure)"
        }
        rustls::Error::InvalidMessage(_) => " (is the server speaking TLS on this port?)",
        _ => "",
    };
    format!("{text}{hint}")
}

/// The TLS handshake over `io`, bounded by `limit` (the `--connect-timeout`: a server that
/// accepts the connection but never answers the handshake must not hold the slot forever).
/// `Err`: why it failed, for the `tls` failure's message.
pub(crate) async fn connect<S>(
    connector: &TlsConnector,
    name: ServerName<'static>,
    io: S,
    limit: Duration,
) -> Result<futures_rustls::client::TlsStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async { connector.connect(name, io).await.map_err(|e| describe(&e)) };
    let timeout = async {
        glommio::timer::sleep(limit).await;
        Err(format!(
            "TLS handshake not finished after {:.1} s (--connect-timeout)",
            limit.as_secs_f64()
        ))
    };
    futures_lite::future::or(handshake, timeout).await
}

/// A blocking TLS stream over `tcp` with the handshake done, for the plain-thread users (the
/// pre-flight wait, `--server-metrics`).
pub fn blocking(
    mut tcp: TcpStream,
    target: &TlsTarget,
) -> io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let mut conn = ClientConnection::new(target.client.config(), target.server_name.clone())
        .map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| io::Error::new(e.kind(), describe(&e)))?;
    }
    Ok(StreamOwned::new(conn, tcp))
}

/// `parley sim --tls-cert FILE --tls-key FILE`: the server config (ALPN `http/1.1`, stateless
/// TLS 1.3 resumption tickets so any of the sim's executors resumes any session). Errors name
/// the file and what is wrong with it.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs("tls-cert", cert)?;
    let key_err = |reason: String| TlsError::File {
        flag: "tls-key",
        path: key.to_path_buf(),
        reason,
    };
    let text = std::fs::read(key).map_err(|e| key_err(e.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
        key_err(format!(
            "no usable PEM private key in it ({e}; expected a `-----BEGIN PRIVATE KEY-----`, \
             `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)"
        ))
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            TlsError::Config(format!(
                "--tls-cert {} with --tls-key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn bad_ca_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = TlsClient::load(Some(&missing), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--ca-cert ") && e.contains("missing.pem"),
            "{e}"
        );
        let empty = write(dir.path(), "empty.pem", "not a certificate\n");
        let e = TlsClient::load(Some(&empty), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nMIIB\n",
        );
        let e = TlsClient::load(Some(&broken), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("broken.pem") && e.contains("certificate 1"),
            "{e}"
        );
        let junk = write(
            dir.path(),
            "junk.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        let e = TlsClient::load(Some(&junk), false).unwrap_err().to_string();
        assert!(
            e.contains("junk.pem") && e.contains("not a usable CA certificate"),
            "{e}"
        );
    }

    #[test]
    fn each_core_gets_its_own_config_offering_http1() {
        let client = TlsClient::load(None, false).unwrap();
        let (a, b) = (client.config(), client.config());
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(a.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(!client.insecure());
        assert!(TlsClient::load(None, true).unwrap().insecure());
    }

    #[test]
    fn handshake_errors_say_why_and_what_to_do() {
        let wrap = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let unknown = describe(&wrap(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        )));
        assert!(
            unknown.contains("UnknownIssuer") && unknown.contains("--ca-cert FILE"),
            "{unknown}"
        );
        /// webpki's error as rustls carries it: only its name says which.
        #[derive(Debug)]
        struct CaUsedAsEndEntity;
        impl std::fmt::Display for CaUsedAsEndEntity {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "CaUsedAsEndEntity")
            }
        }
        impl std::error::Error for CaUsedAsEndEntity {}
        let ca = describe(&wrap(rustls::Error::InvalidCertificate(
            CertificateError::Other(rustls::OtherError(Arc::new(CaUsedAsEndEntity))),
        )));
        assert!(ca.contains("basicConstraints=critical,CA:FALSE"), "{ca}");
        let eof = describe(&io::Error::from(io::ErrorKind::UnexpectedEof));
        assert!(
            eof.contains("closed the connection during the TLS handshake"),
            "{eof}"
        );
    }

    #[test]
    fn server_names_of_hosts() {
        let client = Arc::new(TlsClient::load(None, true).unwrap());
        let ip = TlsTarget::new(client.clone(), "127.0.0.1").unwrap();
        assert!(matches!(ip.server_name, ServerName::IpAddress(_)));
        let v6 = TlsTarget::new(client.clone(), "::1").unwrap();
        assert!(matches!(v6.server_name, ServerName::IpAddress(_)));
        let dns = TlsTarget::new(client.clone(), "api.example.com").unwrap();
        assert!(matches!(dns.server_name, ServerName::DnsName(_)));
        assert!(TlsTarget::new(client, "bad name").is_err());
    }
}
