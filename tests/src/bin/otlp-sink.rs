//! A counting OTLP/HTTP receiver for the benchmark: decodes every `POST /v1/traces` with the
//! official protobuf messages and keeps only the number of spans, so that it can take
//! millions. `GET /count` answers that number. usage: otlp-sink PORT

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: otlp-sink PORT");
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("binding the sink's port");
    let spans = Arc::new(AtomicU64::new(0));
    for stream in listener.incoming().flatten() {
        let spans = spans.clone();
        std::thread::spawn(move || {
            let _ = serve(stream, &spans);
        });
    }
}

fn serve(stream: TcpStream, spans: &AtomicU64) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let (content_type, reply) = if request_line.starts_with("GET /count") {
            (
                "text/plain",
                spans.load(Ordering::SeqCst).to_string().into_bytes(),
            )
        } else {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(request) => {
                    let n: usize = request
                        .resource_spans
                        .iter()
                        .flat_map(|r| &r.scope_spans)
                        .map(|s| s.spans.len())
                        .sum();
                    spans.fetch_add(n as u64, Ordering::SeqCst);
                    (
                        "application/x-protobuf",
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
                Err(e) => {
                    let msg = format!("undecodable export: {e}");
                    write!(
                        writer,
                        "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{msg}",
                        msg.len()
                    )?;
                    continue;
                }
            }
        };
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        )?;
        writer.write_all(&reply)?;
    }
}
