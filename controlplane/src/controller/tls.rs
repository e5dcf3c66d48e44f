//! TLS for the control channel: the controller's certificate is self-signed with its ed25519
//! signing key, and clients pin that key instead of trusting the web PKI.
//!
//! Why pinning and not certificate authorities: a gateway learns the controller's key fingerprint
//! from its enrollment token (and an operator from `corridor controller init`), out of band and
//! before it ever connects. That fingerprint is a stronger statement than any CA could make
//! ("this exact key"), it needs no CA, no DNS name that matches, and no clock that agrees on
//! validity periods — edge gateways often boot with a wrong clock and reach the controller by an
//! address that changes. So the verifier here accepts exactly one certificate key and ignores the
//! names and the validity dates; the TLS handshake signature is still checked against that key, so
//! only the holder of the controller's private key can complete a handshake.
//!
//! Both sides use rustls's ring provider explicitly (never aws-lc).

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::identity::{SigningIdentity, fingerprint};

/// The controller's TLS certificate or configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen refused the key or the names.
    #[error(
        "cannot make the controller's TLS certificate: {0}; check `tls-names` in the controller \
         config (DNS names or IP addresses)"
    )]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("cannot configure TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What a client pins: the controller's ed25519 public key itself, or its fingerprint
/// ([`crate::identity::fingerprint`]) as tokens and people carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// The 32-byte ed25519 public key.
    Key([u8; 32]),
    /// `ed25519:<base64url SHA-256>`.
    Fingerprint(String),
}

impl Pin {
    fn fingerprint(&self) -> String {
        match self {
            Pin::Key(k) => fingerprint(k),
            Pin::Fingerprint(f) => f.clone(),
        }
    }
    fn matches(&self, key: &[u8; 32]) -> bool {
        match self {
            Pin::Key(k) => k == key,
            Pin::Fingerprint(f) => fingerprint(key) == *f,
        }
    }
}

/// The server presented a certificate whose key is not the pinned one. It travels inside
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))`; [`pin_mismatch`] finds it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct PinMismatch {
    /// Fingerprint of the key the server presented (`None`: not an ed25519 certificate, or not
    /// parseable).
    pub presented: Option<String>,
    /// The pinned fingerprint.
    pub pinned: String,
}

impl PinMismatch {
    fn describe(&self) -> String {
        match &self.presented {
            Some(p) => format!(
                "the server presented key {p}, not the pinned {}",
                self.pinned
            ),
            None => format!(
                "the server presented a certificate without an ed25519 key, not the pinned {}",
                self.pinned
            ),
        }
    }
}

/// Finds a [`PinMismatch`] in an error chain (an `io::Error` from tokio-rustls wrapping a
/// `rustls::Error`, or a `rustls::Error` itself).
pub fn pin_mismatch<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a PinMismatch> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(m) = e.downcast_ref::<PinMismatch>() {
            return Some(m);
        }
        let rustls_err = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
            rustls_err
        {
            if let Some(m) = other.0.downcast_ref::<PinMismatch>() {
                return Some(m);
            }
        }
        cur = e.source();
    }
    None
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The controller's server configuration: a self-signed certificate made from its ed25519 key,
/// with `names` (and `localhost`) as subject alternative names. Clients pin the key, so the names
/// are informational. ALPN: `http/1.1`.
pub fn server_config(
    identity: &SigningIdentity,
    names: &[String],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let pkcs8 = PrivatePkcs8KeyDer::from(identity.to_pkcs8_der());
    let key_pair = rcgen::KeyPair::try_from(&pkcs8)?;
    let mut sans: Vec<String> = names.to_vec();
    if !sans.iter().any(|n| n == "localhost") {
        sans.push("localhost".to_owned());
    }
    let mut params = rcgen::CertificateParams::new(sans)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("corridor controller {}", identity.fingerprint()),
    );
    // Long validity: clients ignore dates (see the module doc), but other tools display them.
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
    let cert = params.self_signed(&key_pair)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.to_pkcs8_der())),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration that accepts exactly a server certificate whose key is the ed25519
/// public key `pinned` (see the module doc for why names and dates are ignored).
pub fn client_config(pinned: [u8; 32]) -> Arc<rustls::ClientConfig> {
    client_config_pinned(Pin::Key(pinned))
}

/// Like [`client_config`], pinning a key fingerprint (`ed25519:...`) as an enrollment token or
/// `corridor controller init` gives it.
pub fn client_config_for_fingerprint(fingerprint: &str) -> Arc<rustls::ClientConfig> {
    client_config_pinned(Pin::Fingerprint(fingerprint.to_owned()))
}

/// A client configuration pinning `pin`.
pub fn client_config_pinned(pin: Pin) -> Arc<rustls::ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(PinnedVerifier {
        pin,
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b,
        // The ring provider supports the default versions; this arm is unreachable in practice,
        // and TLS 1.3 alone is what we would pick anyway.
        Err(_) => rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|_| unreachable!("ring supports TLS 1.3")),
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The ed25519 public key of a DER certificate, if it has one.
pub fn certificate_ed25519_key(der: &[u8]) -> Option<[u8; 32]> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let spki = cert.public_key();
    // id-Ed25519, RFC 8410.
    if spki.algorithm.algorithm.to_id_string() != "1.3.101.112" {
        return None;
    }
    <[u8; 32]>::try_from(spki.subject_public_key.data.as_ref()).ok()
}

#[derive(Debug)]
struct PinnedVerifier {
    pin: Pin,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = certificate_ed25519_key(end_entity);
        match key {
            Some(k) if self.pin.matches(&k) => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch {
                    presented: key.map(|k| fingerprint(&k)),
                    pinned: self.pin.fingerprint(),
                }))),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn handshake(
        server: &SigningIdentity,
        client: Arc<rustls::ClientConfig>,
    ) -> Result<Vec<u8>, std::io::Error> {
        let acceptor = tokio_rustls::TlsAcceptor::from(
            server_config(server, &["ctl.example".into()]).unwrap(),
        );
        let connector = tokio_rustls::TlsConnector::from(client);
        let (a, b) = tokio::io::duplex(64 * 1024);
        let srv = tokio::spawn(async move {
            let mut tls = acceptor.accept(b).await?;
            tls.write_all(b"hello").await?;
            tls.shutdown().await?;
            Ok::<_, std::io::Error>(())
        });
        // A name that is in no certificate: pinning ignores names.
        let name = ServerName::try_from("elsewhere.invalid")
            .unwrap()
            .to_owned();
        let result = async {
            let mut tls = connector.connect(name, a).await?;
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await?;
            Ok(buf)
        }
        .await;
        let _ = srv.await;
        result
    }

    #[tokio::test]
    async fn right_pin_connects() {
        let id = SigningIdentity::generate();
        let got = handshake(&id, client_config(id.public())).await.unwrap();
        assert_eq!(got, b"hello");
        let got = handshake(&id, client_config_for_fingerprint(&id.fingerprint()))
            .await
            .unwrap();
        assert_eq!(got, b"hello");
    }

    #[tokio::test]
    async fn wrong_pin_fails_and_says_which_key() {
        let id = SigningIdentity::generate();
        let other = SigningIdentity::generate();
        let err = handshake(&id, client_config(other.public()))
            .await
            .unwrap_err();
        let m = pin_mismatch(&err).expect("a pin mismatch");
        assert_eq!(m.presented.as_deref(), Some(id.fingerprint().as_str()));
        assert_eq!(m.pinned, other.fingerprint());
        let err = handshake(&id, client_config_for_fingerprint(&other.fingerprint()))
            .await
            .unwrap_err();
        assert!(pin_mismatch(&err).is_some(), "{err}");
    }

    #[test]
    fn certificate_carries_the_identity_key() {
        let id = SigningIdentity::generate();
        let config = server_config(&id, &["10.0.0.1".into(), "ctl".into()]).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        // Make a cert the same way and read its key back.
        let key_pair =
            rcgen::KeyPair::try_from(&PrivatePkcs8KeyDer::from(id.to_pkcs8_der())).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_owned()])
            .unwrap()
            .self_signed(&key_pair)
            .unwrap();
        assert_eq!(certificate_ed25519_key(cert.der()), Some(id.public()));
    }
}
