//! Certificates made by the tests with the `openssl` command: a certificate authority, a
//! server certificate for `127.0.0.1`/`localhost` and a client certificate, both signed by it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::servers::TempDir;

/// A small PKI in a temporary directory (removed when dropped).
pub struct Pki {
    _dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

impl Pki {
    pub fn new() -> Pki {
        let dir = TempDir::new("pki");
        let d = dir.path();
        let mut ca = vec!["req", "-x509"];
        ca.extend(EC);
        ca.extend(["-nodes", "-days", "1", "-subj", "/CN=tracer test CA"]);
        ca.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        ca.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        openssl(&ca, d);
        for (name, cn, usage, san) in [
            (
                "server",
                "/CN=localhost",
                "extendedKeyUsage=serverAuth",
                Some("subjectAltName=DNS:localhost,IP:127.0.0.1"),
            ),
            (
                "client",
                "/CN=tracer agent",
                "extendedKeyUsage=clientAuth",
                None,
            ),
        ] {
            let key = format!("{name}.key");
            let cert = format!("{name}.pem");
            let mut args = vec!["req", "-x509", "-CA", "ca.pem", "-CAkey", "ca.key"];
            args.extend(EC);
            args.extend(["-nodes", "-days", "1", "-subj", cn]);
            args.extend(["-addext", "basicConstraints=critical,CA:FALSE"]);
            args.extend(["-addext", "keyUsage=critical,digitalSignature"]);
            args.extend(["-addext", usage]);
            if let Some(san) = san {
                args.extend(["-addext", san]);
            }
            args.extend(["-keyout", &key, "-out", &cert]);
            openssl(&args, d);
        }
        Pki {
            ca: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client.key"),
            _dir: dir,
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
