//! `GET /metrics` over HTTP/1.1: hyper's server on a tokio listener. One request per
//! connection, each connection in its own task with a bounded head and deadlines, so a
//! garbage or slow client costs a task for a few seconds and never reaches the capture loop.
//! Counters come from the capture loop on request (see [`Scrape`]).

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    task::JoinSet,
};

use super::Snapshot;

/// A scrape's request to the capture loop: answer with the counters as they are now.
pub type Scrape = oneshot::Sender<Snapshot>;

/// Connections served at once; further ones wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 16;
/// Largest request head read (hyper's smallest read buffer); a longer one gets 431.
const MAX_HEAD: usize = 8 * 1024;
/// Most header lines parsed; more get 431.
const MAX_HEADERS: usize = 32;

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

/// How long a connection may take.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    /// To send a whole request head.
    head: Duration,
    /// For the capture loop to answer.
    snapshot: Duration,
    /// For the whole connection, taking the answer included, so that a client that does not
    /// read cannot hold a slot.
    connection: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            head: Duration::from_secs(5),
            snapshot: Duration::from_secs(5),
            connection: Duration::from_secs(15),
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
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.deadlines.head)
            .max_buf_size(MAX_HEAD)
            .max_headers(MAX_HEADERS)
            .keep_alive(false)
            // A client may close its sending side once the request is out and still read.
            .half_close(true)
            .title_case_headers(true);
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
            conns.spawn(serve(http.clone(), stream, scrapes.clone(), self.deadlines));
        }
    }
}

/// One connection: hyper reads a head (answering 400 or 431 itself when it cannot), asks
/// [`answer`], writes the response and closes.
async fn serve(
    http: http1::Builder,
    stream: TcpStream,
    scrapes: mpsc::Sender<Scrape>,
    deadlines: Deadlines,
) {
    let service = service_fn(|req| answer(req, &scrapes, deadlines.snapshot));
    let conn = http.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(deadlines.connection, conn).await {
        Ok(Ok(())) => {}
        // Garbage, a head too slow or too large, a client gone: nothing more to do.
        Ok(Err(e)) => log::debug!("serving a metrics connection failed: {e}"),
        Err(_) => log::debug!(
            "a metrics connection took longer than {:?}",
            deadlines.connection
        ),
    }
}

async fn answer<B>(
    req: Request<B>,
    scrapes: &mpsc::Sender<Scrape>,
    deadline: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(text(StatusCode::NOT_FOUND, "try /metrics\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let ask = async {
        let (tx, rx) = oneshot::channel();
        scrapes.send(tx).await.ok()?;
        rx.await.ok()
    };
    let Ok(Some(snapshot)) = tokio::time::timeout(deadline, ask).await else {
        return Ok(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "counters unavailable\n",
        ));
    };
    // hyper leaves the body out for HEAD and keeps its length.
    Ok(match super::render(snapshot) {
        Ok(body) => response(StatusCode::OK, super::CONTENT_TYPE, body.into()),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    response(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn requests_are_routed_or_refused() {
        let (tx, mut rx) = mpsc::channel::<Scrape>(4);
        tokio::spawn(async move {
            while let Some(reply) = rx.recv().await {
                let _ = reply.send(Snapshot::default());
            }
        });
        let status = async |method: Method, target: &str| {
            let req = Request::builder()
                .method(method)
                .uri(target)
                .body(())
                .unwrap();
            let r = answer(req, &tx, Duration::from_secs(5)).await.unwrap();
            let allow = r.headers().get(header::ALLOW).cloned();
            (r.status().as_u16(), allow)
        };
        assert_eq!(status(Method::GET, "/metrics").await, (200, None));
        assert_eq!(status(Method::GET, "/metrics?x=1").await, (200, None));
        assert_eq!(status(Method::HEAD, "/metrics").await, (200, None));
        let allow = Some(HeaderValue::from_static("GET, HEAD"));
        assert_eq!(status(Method::POST, "/metrics").await, (405, allow));
        assert_eq!(status(Method::GET, "/").await.0, 404);
        assert_eq!(status(Method::GET, "/metrics/x").await.0, 404);
        assert_eq!(status(Method::POST, "/x").await.0, 404);
    }

    /// A server on a loopback port whose scrapes get `Snapshot::default()` with 3 spans,
    /// or no answer at all (the request held) when `answered` is false.
    async fn start(deadlines: Deadlines, answered: bool) -> SocketAddr {
        let mut server = Server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        server.deadlines = deadlines;
        let addr = server.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel::<Scrape>(4);
        tokio::spawn(async move {
            // Unanswered requests are held, not dropped: a loop that is busy, not gone.
            let mut held = Vec::new();
            while let Some(reply) = rx.recv().await {
                if answered {
                    let mut s = Snapshot::default();
                    s.pipeline.spans = 3;
                    let _ = reply.send(s);
                } else {
                    held.push(reply);
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
        assert!(head.contains("Connection: close"), "{r}");
        let r = get(addr, "/").await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = exchange(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        assert!(r.contains("Allow: GET, HEAD\r\n"), "{r}");
        let r = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "no body for HEAD: {r}");
        assert!(
            r.contains(&format!("Content-Length: {}", body.len())),
            "{r}"
        );
    }

    #[tokio::test]
    async fn garbage_gets_an_error_and_the_next_scrape_an_answer() {
        let addr = start(Deadlines::default(), true).await;
        let r = exchange(addr, b"\x00\xff\x16\x03 garbage \r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        let r = exchange(addr, b"").await;
        assert_eq!(r, "", "a client that sends nothing and leaves gets nothing");
        let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        let r = exchange(
            addr,
            format!("GET /metrics HTTP/1.1\r\n{many}\r\n").as_bytes(),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 431 "), "too many headers: {r}");
        // A head past the limit is refused without waiting for the rest of it.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nX: ").await.unwrap();
        s.write_all(&[b'a'; MAX_HEAD]).await.unwrap();
        let mut out = Vec::new();
        let got = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
        assert!(got.is_ok(), "still waiting for the rest of the head");
        let r = String::from_utf8_lossy(&out);
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 200 "));
    }

    #[tokio::test]
    async fn slow_clients_are_cut_off_and_do_not_block_scrapes() {
        let deadlines = Deadlines {
            head: Duration::from_millis(300),
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
    async fn a_connection_has_an_overall_deadline() {
        // The loop never answers and would be waited for long; the connection's own deadline
        // ends it first, without an answer.
        let deadlines = Deadlines {
            snapshot: Duration::from_secs(30),
            connection: Duration::from_millis(300),
            ..Deadlines::default()
        };
        let addr = start(deadlines, false).await;
        let got = tokio::time::timeout(Duration::from_secs(5), get(addr, "/metrics")).await;
        assert_eq!(got.as_deref(), Ok(""), "closed at the deadline");
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
