//! `GET /metrics` over HTTP/1.1: a small responder on a tokio listener. One request per
//! connection, each connection in its own task with a bounded head and a deadline, so a
//! garbage or slow client costs a task for a few seconds and never reaches the capture loop.
//! Counters come from the capture loop on request (see [`Scrape`]).

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    task::JoinSet,
};

use super::Snapshot;

/// A scrape's request to the capture loop: answer with the counters as they are now.
pub type Scrape = oneshot::Sender<Snapshot>;

/// Connections served at once; further ones wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 16;
/// Largest request head read; a longer one gets 431.
const MAX_HEAD: usize = 8 * 1024;
/// Most header lines parsed; more get 431.
const MAX_HEADERS: usize = 32;
/// Most bytes read and discarded after answering (see [`serve`]).
const LINGER_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    // The cause is part of the message, not a source, so that a report of the whole chain
    // names it once.
    #[error("cannot serve metrics on {addr}: {error}; choose another --prometheus-port")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// How long a connection may take for each step.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    /// To send a whole request head.
    read: Duration,
    /// For the capture loop to answer.
    snapshot: Duration,
    /// To take the response and close (see [`serve`]).
    write: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            read: Duration::from_secs(5),
            snapshot: Duration::from_secs(5),
            write: Duration::from_secs(5),
        }
    }
}

/// The listening endpoint, bound but not yet serving.
pub struct Server {
    listener: TcpListener,
    deadlines: Deadlines,
}

impl Server {
    /// Listen on `addr`; a port in use is an error here, before anything else starts.
    pub async fn bind(addr: SocketAddr) -> Result<Server, ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|error| ServeError::Bind { addr, error })?;
        Ok(Server {
            listener,
            deadlines: Deadlines::default(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until the task is dropped (which drops every connection's task with it).
    /// Scrapes go to `scrapes`; when no one answers there, `/metrics` answers 503.
    pub async fn run(self, scrapes: mpsc::Sender<Scrape>) {
        let mut conns = JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            if conns.len() >= MAX_CONNECTIONS {
                conns.join_next().await;
                continue;
            }
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    log::debug!("accepting a metrics connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            conns.spawn(serve(stream, scrapes.clone(), self.deadlines));
        }
    }
}

/// One connection: read a head, answer, close.
async fn serve(mut stream: TcpStream, scrapes: mpsc::Sender<Scrape>, deadlines: Deadlines) {
    let response = match tokio::time::timeout(deadlines.read, read_head(&mut stream)).await {
        Ok(Ok(Head::Request(route))) => answer(route, &scrapes, deadlines.snapshot).await,
        Ok(Ok(Head::Malformed)) => Response::text(400, "Bad Request", "malformed request\n"),
        Ok(Ok(Head::TooLarge)) => Response::text(
            431,
            "Request Header Fields Too Large",
            "request head too large\n",
        ),
        // Gone before a whole head, or too slow to send one: nothing to answer.
        Ok(Ok(Head::Closed)) | Ok(Err(_)) | Err(_) => return,
    };
    let write = async {
        stream.write_all(&response.to_bytes()).await?;
        stream.shutdown().await?;
        // Take what the client still sends (the rest of a head past the limit) until it
        // closes, so that closing here does not reset the connection before the client has
        // read the answer.
        let mut left = LINGER_BYTES;
        let mut sink = [0u8; 1024];
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, std::io::Error>(())
    };
    if let Ok(Err(e)) = tokio::time::timeout(deadlines.write, write).await {
        log::debug!("answering a metrics request failed: {e}");
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    WrongMethod,
    NotFound,
}

/// How reading a request head ended.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    Request(Route),
    Malformed,
    TooLarge,
    Closed,
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buf) {
            return Ok(head);
        }
    }
}

/// The outcome of the bytes read so far, or `None` while the head is incomplete.
fn parse_head(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let (Some(method), Some(target)) = (req.method, req.path) else {
                return Some(Head::Malformed);
            };
            Some(Head::Request(route(method, target)))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Some(Head::TooLarge),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Head::TooLarge),
        Err(_) => Some(Head::Malformed),
    }
}

fn route(method: &str, target: &str) -> Route {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { head_only: false },
        "HEAD" => Route::Metrics { head_only: true },
        _ => Route::WrongMethod,
    }
}

async fn answer(route: Route, scrapes: &mpsc::Sender<Scrape>, deadline: Duration) -> Response {
    let head_only = match route {
        Route::Metrics { head_only } => head_only,
        Route::WrongMethod => {
            let mut r = Response::text(405, "Method Not Allowed", "use GET\n");
            r.allow = true;
            return r;
        }
        Route::NotFound => return Response::text(404, "Not Found", "try /metrics\n"),
    };
    let ask = async {
        let (tx, rx) = oneshot::channel();
        scrapes.send(tx).await.ok()?;
        rx.await.ok()
    };
    let Ok(Some(snapshot)) = tokio::time::timeout(deadline, ask).await else {
        return Response::text(503, "Service Unavailable", "counters unavailable\n");
    };
    match super::render(snapshot) {
        Ok(body) => Response {
            status: 200,
            reason: "OK",
            content_type: super::CONTENT_TYPE,
            body: body.into_bytes(),
            head_only,
            allow: false,
        },
        Err(_) => Response::text(500, "Internal Server Error", "encoding failed\n"),
    }
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    head_only: bool,
    /// Add `Allow: GET, HEAD` (for 405).
    allow: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            head_only: false,
            allow: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_routed_or_refused() {
        let ok = |m: &str, t: &str| parse_head(format!("{m} {t} HTTP/1.1\r\n\r\n").as_bytes());
        assert_eq!(
            ok("GET", "/metrics"),
            Some(Head::Request(Route::Metrics { head_only: false }))
        );
        assert_eq!(
            ok("GET", "/metrics?x=1"),
            Some(Head::Request(Route::Metrics { head_only: false }))
        );
        assert_eq!(
            ok("HEAD", "/metrics"),
            Some(Head::Request(Route::Metrics { head_only: true }))
        );
        assert_eq!(
            ok("POST", "/metrics"),
            Some(Head::Request(Route::WrongMethod))
        );
        assert_eq!(ok("GET", "/"), Some(Head::Request(Route::NotFound)));
        assert_eq!(
            ok("GET", "/metrics/x"),
            Some(Head::Request(Route::NotFound))
        );
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHost: x"), None);
        assert_eq!(
            parse_head(b"\x16\x03\x01\x02\x00\x01"),
            Some(Head::Malformed)
        );
        let long = format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(parse_head(long.as_bytes()), Some(Head::TooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        let many = format!("GET /metrics HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_head(many.as_bytes()), Some(Head::TooLarge));
    }

    /// A server on a loopback port whose scrapes get `Snapshot::default()` with 3 spans,
    /// or no answer at all when `answered` is false.
    async fn start(deadlines: Deadlines, answered: bool) -> SocketAddr {
        let mut server = Server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        server.deadlines = deadlines;
        let addr = server.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel::<Scrape>(4);
        tokio::spawn(async move {
            while let Some(reply) = rx.recv().await {
                if answered {
                    let mut s = Snapshot::default();
                    s.pipeline.spans = 3;
                    let _ = reply.send(s);
                }
            }
        });
        tokio::spawn(server.run(tx));
        addr
    }

    /// Send `request`, close the sending side and read until the server closes.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await
    }

    #[tokio::test]
    async fn serves_the_counters_and_nothing_else() {
        let addr = start(Deadlines::default(), true).await;
        let r = get(addr, "/metrics").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
            "{r}"
        );
        assert!(r.contains("\ntracer_spans_total 3\n"), "{r}");
        assert!(r.ends_with("# EOF\n"), "{r}");
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{r}"
        );
        let r = get(addr, "/").await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = exchange(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        assert!(r.contains("Allow: GET, HEAD\r\n"), "{r}");
        let r = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "no body for HEAD: {r}");
    }

    #[tokio::test]
    async fn garbage_gets_an_error_and_the_next_scrape_an_answer() {
        let addr = start(Deadlines::default(), true).await;
        let r = exchange(addr, b"\x00\xff\x16\x03 garbage \r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        let r = exchange(addr, b"").await;
        assert_eq!(r, "", "a client that sends nothing and leaves gets nothing");
        // A head past the limit is refused without waiting for the rest of it.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nX: ").await.unwrap();
        s.write_all(&[b'a'; 2 * MAX_HEAD]).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let r = String::from_utf8_lossy(&out);
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 200 "));
    }

    #[tokio::test]
    async fn slow_clients_are_cut_off_and_do_not_block_scrapes() {
        let deadlines = Deadlines {
            read: Duration::from_millis(300),
            ..Deadlines::default()
        };
        let addr = start(deadlines, true).await;
        // Every slot taken by a client that never finishes its head.
        let mut slow = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 2 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
            slow.push(s);
        }
        let start = std::time::Instant::now();
        let r = get(addr, "/metrics").await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        // The slow ones were closed without an answer.
        for mut s in slow {
            let mut out = Vec::new();
            let got = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
            assert!(matches!(got, Ok(Ok(0))), "{got:?} {out:?}");
        }
    }

    #[tokio::test]
    async fn no_answer_from_the_loop_is_a_503() {
        let deadlines = Deadlines {
            snapshot: Duration::from_millis(200),
            ..Deadlines::default()
        };
        let addr = start(deadlines, false).await;
        let r = get(addr, "/metrics").await;
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
    }

    #[tokio::test]
    async fn a_port_in_use_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = Server::bind(addr).await.err().expect("the port is taken");
        let text = err.to_string();
        assert!(
            text.contains(&format!("cannot serve metrics on {addr}")),
            "{text}"
        );
        assert!(text.contains("in use"), "{text}");
        assert!(text.contains("--prometheus-port"), "{text}");
        // As the agent prints it: the whole chain, the cause once.
        let printed = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(printed.matches("in use").count(), 1, "{printed}");
    }
}
