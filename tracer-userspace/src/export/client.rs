//! The connection to an OTLP receiver: a `reqwest` client (http/protobuf) or a `tonic`
//! channel (gRPC), over TLS for `https://` endpoints (rustls) with the system's trusted
//! certificates plus the configured ones, and a client certificate for mTLS.

use std::{path::Path, sync::Once};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::config::{OtlpConfig, TlsFiles};

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid endpoint: {0}")]
    Endpoint(String),
    #[error("invalid header `{0}`")]
    Header(String),
    #[error("HTTP client: {0}")]
    Client(String),
    #[error("{path}: {why}")]
    Tls { path: String, why: String },
}

/// TLS material read from the configured files, checked to be what it claims.
#[derive(Debug, Default)]
pub struct Material {
    /// PEM certificates to trust besides the system's.
    pub ca: Option<Vec<u8>>,
    /// PEM client certificate chain and private key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|e| BuildError::Tls {
        path: path.display().to_string(),
        why: format!("cannot read it: {e}"),
    })
}

fn certificates(path: &Path) -> Result<Vec<u8>, BuildError> {
    let pem = read(path)?;
    let bad = |why: String| BuildError::Tls {
        path: path.display().to_string(),
        why,
    };
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(pem)
}

impl Material {
    /// Read and check the files `files` names.
    pub fn load(files: &TlsFiles) -> Result<Material, BuildError> {
        let ca = files.ca.as_deref().map(certificates).transpose()?;
        let identity = match (&files.client_certificate, &files.client_key) {
            (Some(cert), Some(key)) => {
                let cert = certificates(cert)?;
                let pem = read(key)?;
                PrivateKeyDer::from_pem_slice(&pem).map_err(|e| BuildError::Tls {
                    path: key.display().to_string(),
                    why: format!("not a PEM private key: {e}"),
                })?;
                Some((cert, pem))
            }
            _ => None,
        };
        Ok(Material { ca, identity })
    }
}

/// rustls's cryptography, chosen once for the process: ring, which tonic's TLS uses too and
/// which builds without a C toolchain beyond `cc`. It offers no post-quantum key exchange
/// (hence rustls's deprecation note); the classical suites it offers are those of
/// `opentelemetry-otlp` built with `tls-ring`.
#[allow(deprecated)]
fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Fails only when a provider is already installed, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Warn when TLS files are configured for an endpoint that does not use TLS.
fn warn_unused(config: &OtlpConfig) {
    if !config.is_tls() && !config.tls.is_empty() {
        log::warn!(
            "certificate files are configured but {} is not https://: they are not used",
            config.endpoint
        );
    }
}

/// The HTTP client for `config` (its timeout and TLS; headers go on each request).
pub fn http_client(config: &OtlpConfig) -> Result<reqwest::Client, BuildError> {
    install_crypto();
    warn_unused(config);
    let mut builder = reqwest::Client::builder().timeout(config.timeout);
    if config.is_tls() {
        let material = Material::load(&config.tls)?;
        if let Some(ca) = &material.ca {
            let certs = reqwest::Certificate::from_pem_bundle(ca)
                .map_err(|e| BuildError::Client(e.to_string()))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &material.identity {
            // A newline between them: a file may end without one.
            let identity = reqwest::Identity::from_pem(&[key.as_slice(), b"\n", cert].concat())
                .map_err(|e| BuildError::Client(format!("client certificate: {e}")))?;
            builder = builder.identity(identity);
        }
    }
    builder
        .build()
        .map_err(|e| BuildError::Client(e.to_string()))
}

/// `headers` as gRPC metadata; a name or value gRPC cannot carry is an error naming it.
pub fn grpc_metadata(
    headers: &[(String, String)],
) -> Result<tonic::metadata::MetadataMap, BuildError> {
    let mut metadata = tonic::metadata::MetadataMap::new();
    for (k, v) in headers {
        let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
            .map_err(|_| BuildError::Header(k.clone()))?;
        let value = v.parse().map_err(|_| BuildError::Header(k.clone()))?;
        metadata.insert(key, value);
    }
    Ok(metadata)
}

/// The gRPC channel for `config` (its timeout and TLS), connected on first use.
pub fn grpc_channel(config: &OtlpConfig) -> Result<tonic::transport::Channel, BuildError> {
    install_crypto();
    warn_unused(config);
    let mut endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
        .map_err(|e| BuildError::Endpoint(e.to_string()))?
        .timeout(config.timeout);
    if config.is_tls() {
        let material = Material::load(&config.tls)?;
        let mut tls = tonic::transport::ClientTlsConfig::new();
        // tonic refuses a host without system certificates even when a CA file is given.
        if !rustls_native_certs::load_native_certs().certs.is_empty() {
            tls = tls.with_native_roots();
        }
        if let Some(ca) = &material.ca {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &material.identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| BuildError::Endpoint(e.to_string()))?;
    }
    Ok(endpoint.connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_what_they_claim_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("tracer-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let missing = dir.join("missing.pem");
        for (files, needle) in [
            (
                TlsFiles {
                    ca: Some(garbage.clone()),
                    ..TlsFiles::default()
                },
                "holds no PEM certificate",
            ),
            (
                TlsFiles {
                    ca: Some(missing.clone()),
                    ..TlsFiles::default()
                },
                "cannot read it",
            ),
        ] {
            let err = Material::load(&files).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
            assert!(err.contains(dir.to_str().unwrap()), "{err}");
        }
        let mut config = OtlpConfig::new(
            "https://127.0.0.1:1/v1/traces",
            super::super::config::Protocol::HttpProtobuf,
        );
        config.tls.ca = Some(garbage.clone());
        assert!(http_client(&config).is_err());
        config.protocol = super::super::config::Protocol::Grpc;
        assert!(grpc_channel(&config).is_err());
        // Without TLS files an https:// endpoint uses the system's certificates.
        config.tls = TlsFiles::default();
        assert!(http_client(&config).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
