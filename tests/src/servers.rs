//! Real servers and clients for the tests: Python's http.server, nginx, curl.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A server process, killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    /// Pids whose spans the server's work shows up under (nginx answers from its workers).
    pub pids: Vec<u32>,
    _dir: Option<TempDir>,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The certificate a server made for itself, if it did ([`self_signed`]).
    pub fn certificate(&self) -> Option<PathBuf> {
        let cert = self._dir.as_ref()?.path().join("cert.pem");
        cert.exists().then_some(cert)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = crate::wait_for(Duration::from_secs(3), || {
            self.child.try_wait().ok().flatten()
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "tracer-e2e-{tag}-{}-{}",
            std::process::id(),
            crate::free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wait_listening(port: u16) {
    // A bound, not a wait: interpreters start slowly under the kernel matrix's emulation.
    let up = crate::wait_for(Duration::from_secs(60), || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    assert!(
        up.is_some(),
        "server on port {port} did not start listening"
    );
}

/// `python3 -m http.server` serving a directory with an `index.html`.
pub fn python_http(port: u16) -> Server {
    let dir = TempDir::new("py");
    std::fs::write(dir.path().join("index.html"), "<p>hello from python</p>\n").unwrap();
    let mut server = spawn_server(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "-d",
            ])
            .arg(dir.path()),
        port,
    );
    server._dir = Some(dir);
    server
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, and its key, made with the
/// `openssl` command in `dir`: (certificate, key).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// `scripts/https_server.py`: Python's http.server over TLS, with a certificate of its own;
/// `/big` answers 5 MB.
pub fn python_https(port: u16) -> Server {
    python_https_calling(port, None)
}

/// [`python_https`] whose `GET /chain` first asks the HTTPS service on `downstream` for `/chain`.
pub fn python_https_calling(port: u16, downstream: Option<u16>) -> Server {
    let dir = TempDir::new("https");
    let (cert, key) = self_signed(dir.path());
    let mut server = spawn_server(
        Command::new("python3")
            .arg(script("https_server.py"))
            .arg(port.to_string())
            .args([&cert, &key])
            .args(downstream.map(|d| d.to_string())),
        port,
    );
    server._dir = Some(dir);
    server
}

/// Node's https server (`https_server.js`): OpenSSL linked into the executable, working on
/// memory buffers. `GET /chain` first asks the HTTPS service on `downstream` for `/chain`;
/// `plain` serves plain HTTP instead (the downstream call stays HTTPS).
pub fn node_https(port: u16, downstream: Option<u16>, plain: bool) -> Server {
    let dir = TempDir::new("nodehttps");
    let (cert, key) = self_signed(dir.path());
    let mut cmd = Command::new("node");
    cmd.arg(script("https_server.js"))
        .arg(port.to_string())
        .args([&cert, &key])
        .args(downstream.map(|d| d.to_string()));
    if plain {
        cmd.env("PLAIN", "1");
    }
    let mut server = spawn_server(&mut cmd, port);
    server._dir = Some(dir);
    server
}

/// The Go test program serving HTTPS (crypto/tls) with a certificate of its own; `stripped`
/// picks the build without a symbol table.
pub fn go_https(port: u16, stripped: bool) -> Server {
    let dir = TempDir::new("gohttps");
    let (cert, key) = self_signed(dir.path());
    let binary = if stripped {
        go_binary_stripped()
    } else {
        go_binary()
    };
    let mut server = spawn_server(
        Command::new(binary)
            .args(["serves", &port.to_string()])
            .args([&cert, &key]),
        port,
    );
    server._dir = Some(dir);
    server
}

/// Size of the big static file nginx serves (`/static/big.bin`, `/sendfile/big.bin`).
pub const BIG_FILE_LEN: usize = 300_000;

/// nginx in the foreground with one worker: `/` returns a fixed body, `/static/` files with
/// sendfile off (read + writev), `/sendfile/` the same files with sendfile on.
pub fn nginx(port: u16) -> Server {
    nginx_with(port, false, false)
}

/// [`nginx`] over TLS (its `ssl` module, OpenSSL), with a certificate of its own; HTTP/1.1.
pub fn nginx_https(port: u16) -> Server {
    nginx_with(port, true, false)
}

/// [`nginx`] speaking HTTP/2: over TLS (`h2` by ALPN) or, without, cleartext with prior
/// knowledge (h2c).
pub fn nginx_http2(port: u16, tls: bool) -> Server {
    nginx_with(port, tls, true)
}

fn nginx_with(port: u16, tls: bool, http2: bool) -> Server {
    let h2 = if http2 { " http2" } else { "" };
    let dir = TempDir::new("nginx");
    let root = dir.path();
    let listen = if tls {
        let (cert, key) = self_signed(root);
        format!(
            "listen 127.0.0.1:{port} ssl{h2};\n    ssl_certificate {};\n    ssl_certificate_key {};",
            cert.display(),
            key.display()
        )
    } else {
        format!("listen 127.0.0.1:{port}{h2};")
    };
    std::fs::create_dir_all(root.join("static")).unwrap();
    std::fs::write(root.join("static/file.txt"), "x".repeat(5000)).unwrap();
    std::fs::write(root.join("static/big.bin"), vec![b'b'; BIG_FILE_LEN]).unwrap();
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {root}/body;\n  proxy_temp_path {root}/proxy;\n\
         fastcgi_temp_path {root}/fastcgi;\n  uwsgi_temp_path {root}/uwsgi;\n  scgi_temp_path {root}/scgi;\n\
         server {{\n    {listen}\n    location = / {{ return 200 \"hello from nginx\\n\"; }}\n\
             location /static/ {{ root {root}; }}\n\
             location /sendfile/ {{ alias {root}/static/; sendfile on; }}\n  }}\n}}\n",
        root = root.display()
    );
    let conf_path = root.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(nginx_binary())
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nginx");
    wait_listening(port);
    let master = child.id();
    let workers = crate::wait_for(Duration::from_secs(5), || {
        let w = children_of(master);
        (!w.is_empty()).then_some(w)
    })
    .expect("nginx started no worker");
    Server {
        child,
        port,
        pids: workers,
        _dir: Some(dir),
    }
}

fn nginx_binary() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// Direct children of `pid`, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Base name of a process's executable, as the agent reports `service.name`.
pub fn exe_name(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_default()
}

/// What one curl run did.
pub struct CurlRun {
    pub pid: u32,
    /// The status of the first request.
    pub status: u16,
    /// The status of each request, in order (curl may be given several URLs).
    pub statuses: Vec<u16>,
}

/// Run curl once against `url` with extra arguments; returns its pid and the HTTP status.
pub fn curl(url: &str, extra: &[&str]) -> CurlRun {
    curl_many(&[url], extra)
}

/// Run one curl process for several URLs (it reuses the connection: keep-alive).
pub fn curl_many(urls: &[&str], extra: &[&str]) -> CurlRun {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "%{http_code}", "--max-time", "10"])
        .args(extra);
    for url in urls {
        cmd.args(["-o", "/dev/null", url]);
    }
    let child = cmd.stdout(Stdio::piped()).spawn().expect("starting curl");
    let pid = child.id();
    let out = child.wait_with_output().expect("waiting for curl");
    // `%{http_code}` is three digits per request, with nothing between them.
    let codes = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let statuses: Vec<u16> = codes
        .as_bytes()
        .chunks(3)
        .filter_map(|c| std::str::from_utf8(c).ok()?.parse().ok())
        .collect();
    CurlRun {
        pid,
        status: statuses.first().copied().unwrap_or(0),
        statuses,
    }
}

/// A helper script shipped with the tests.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// `scripts/server.py`: chunked, close-delimited, 204 and slow responses.
pub fn python_framings(port: u16) -> Server {
    spawn_server(
        Command::new("python3")
            .arg(script("server.py"))
            .arg(port.to_string()),
        port,
    )
}

/// What one client run did: its pid and the statuses it printed.
pub struct ClientRun {
    pub pid: u32,
    pub statuses: Vec<u16>,
}

/// A client that ran to completion, and what it printed.
pub struct ClientText {
    pub pid: u32,
    pub text: String,
}

/// Run a client command to completion and keep what it prints.
pub fn run_client_text(cmd: &mut Command) -> ClientText {
    let child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().expect("waiting for the client");
    assert!(out.status.success(), "{cmd:?} failed");
    ClientText {
        pid,
        text: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// Run `scripts/client.py MODE 127.0.0.1 PORT [ARG]`.
pub fn python_client(mode: &str, port: u16, arg: Option<&str>) -> ClientRun {
    run_client(
        Command::new("python3")
            .arg(script("client.py"))
            .args([mode, "127.0.0.1", &port.to_string()])
            .args(arg),
    )
}

/// `scripts/grpc_js_server.js`: @grpc/grpc-js serving `demo.Echo` over h2c, or over TLS with a
/// certificate of its own ([`Server::certificate`]).
pub fn grpc_js(port: u16, tls: bool) -> Server {
    let dir = TempDir::new("grpcjs");
    let mut cmd = Command::new("node");
    cmd.arg(script("grpc_js_server.js")).arg(port.to_string());
    if tls {
        let (cert, key) = self_signed(dir.path());
        cmd.args([&cert, &key]);
    }
    let mut server = spawn_server(&mut cmd, port);
    server._dir = Some(dir);
    server
}

/// Start a server command that listens on `port`; spans come from the process itself.
pub fn spawn_server(cmd: &mut Command, port: u16) -> Server {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    wait_listening(port);
    let pid = child.id();
    Server {
        child,
        port,
        pids: vec![pid],
        _dir: None,
    }
}

/// Run a client command to completion; it prints the statuses it got.
pub fn run_client(cmd: &mut Command) -> ClientRun {
    let ClientText { pid, text } = run_client_text(cmd);
    let statuses = text
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    ClientRun { pid, statuses }
}

/// The Go test program (`scripts/go`), built once per test process with Debian's Go.
pub fn go_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| go_build("gohttp", &[])).clone()
}

/// The Go test program without its symbol table (`-ldflags=-s -w`), as release builds ship.
pub fn go_binary_stripped() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| go_build("gohttp-stripped", &["-ldflags=-s -w"]))
        .clone()
}

/// The Go gRPC test program (`scripts/gogrpc`), built once per test process with Debian's Go
/// and Debian's `google.golang.org/grpc` sources (GOPATH mode: Debian packages Go libraries
/// as sources under `/usr/share/gocode`).
pub fn go_grpc_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e/gogrpc");
            let status = Command::new("go")
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .env("GO111MODULE", "off")
                .env("GOPATH", "/usr/share/gocode")
                .current_dir(script("gogrpc"))
                .status()
                .expect("running go build");
            assert!(status.success(), "go build of scripts/gogrpc failed");
            out
        })
        .clone()
}

fn go_build(name: &str, flags: &[&str]) -> PathBuf {
    let out = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/e2e")
        .join(name);
    let status = Command::new("go")
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(".")
        .current_dir(script("go"))
        .status()
        .expect("running go build");
    assert!(status.success(), "go build failed");
    out
}

/// `scripts/express_app.js` on `port` (an express app on Node's event loop), calling out to
/// `downstream`. Express comes from `cargo xtask setup --test` (into `scripts/node_modules`).
pub fn express_app(port: u16, downstream: u16) -> Server {
    let found = Command::new("node")
        .args(["-e", "require.resolve('express')"])
        .current_dir(script(""))
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "the npm package express is missing: run `cargo xtask setup --test`"
    );
    spawn_server(
        Command::new("node")
            .arg(script("express_app.js"))
            .args([port.to_string(), downstream.to_string()]),
        port,
    )
}

/// `scripts/aiohttp_app.py` on `port` (an aiohttp app on asyncio's event loop), calling out
/// to `downstream`. aiohttp comes from `cargo xtask setup --test`.
pub fn aiohttp_app(port: u16, downstream: u16) -> Server {
    let found = Command::new("python3")
        .args(["-c", "import aiohttp"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "the Python package aiohttp is missing: run `cargo xtask setup --test`"
    );
    spawn_server(
        Command::new("python3")
            .arg(script("aiohttp_app.py"))
            .args([port.to_string(), downstream.to_string()]),
        port,
    )
}
