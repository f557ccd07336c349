//! A counting OTLP/HTTP receiver for the benchmark: counts the spans of every
//! `POST /v1/traces` and keeps only that number, so that it can take millions. `GET /count`
//! answers that number. usage: otlp-sink PORT
//!
//! It shares the benchmark's machine with the traced programs, so it must cost little: spans
//! are counted by walking the protobuf wire format down to them, without building the
//! messages (a full decode with the official messages cost about 5 us per span, as much as
//! the agent), and one request in [`FULL_DECODE_EVERY`] is also decoded with the official
//! messages, which must agree.

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
    let checked = Arc::new(AtomicU64::new(0));
    for stream in listener.incoming().flatten() {
        let (spans, checked) = (spans.clone(), checked.clone());
        std::thread::spawn(move || {
            let _ = serve(stream, &spans, &checked);
        });
    }
}

/// One request in this many is decoded in full too.
const FULL_DECODE_EVERY: u64 = 256;

/// The spans of an encoded `ExportTraceServiceRequest`: its `resource_spans` (field 1), their
/// `scope_spans` (2), their `spans` (2). With `full`, the official messages decode it too and
/// must count the same.
fn count_spans(body: &[u8], full: bool) -> Result<u64, String> {
    let mut n = 0u64;
    each_field(body, 1, &mut |resource| {
        each_field(resource, 2, &mut |scope| {
            each_field(scope, 2, &mut |_| {
                n += 1;
                Ok(())
            })
        })
    })?;
    if full {
        let request = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
        let decoded: usize = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        if decoded as u64 != n {
            return Err(format!("{decoded} spans decoded, {n} counted"));
        }
    }
    Ok(n)
}

/// Call `f` with each length-delimited field numbered `number` of the message `buf`; every
/// field must be well-formed and fit in the message.
fn each_field(
    mut buf: &[u8],
    number: u32,
    f: &mut dyn FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let err = |e: prost::DecodeError| e.to_string();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).map_err(err)?;
        let skip = match wire {
            WireType::Varint => {
                decode_varint(&mut buf).map_err(err)?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => decode_varint(&mut buf).map_err(err)? as usize,
            other => return Err(format!("unexpected wire type {other:?}")),
        };
        if skip > buf.len() {
            return Err(format!("a field of {skip} bytes in {} left", buf.len()));
        }
        let (value, rest) = buf.split_at(skip);
        if tag == number && wire == WireType::LengthDelimited {
            f(value)?;
        }
        buf = rest;
    }
    Ok(())
}

fn serve(stream: TcpStream, spans: &AtomicU64, checked: &AtomicU64) -> std::io::Result<()> {
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
            match count_spans(
                &body,
                checked
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(FULL_DECODE_EVERY),
            ) {
                Ok(n) => {
                    spans.fetch_add(n, Ordering::SeqCst);
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

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;

    fn request(shape: &[&[usize]]) -> Vec<u8> {
        ExportTraceServiceRequest {
            resource_spans: shape
                .iter()
                .map(|scopes| ResourceSpans {
                    scope_spans: scopes
                        .iter()
                        .map(|&n| ScopeSpans {
                            spans: (0..n)
                                .map(|i| Span {
                                    name: format!("span {i}"),
                                    trace_id: vec![7; 16],
                                    start_time_unix_nano: 1 << 60,
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn counts_spans_across_resources_and_scopes() {
        let body = request(&[&[3, 0, 2], &[], &[5]]);
        assert_eq!(count_spans(&body, false), Ok(10));
        assert_eq!(count_spans(&body, true), Ok(10));
        assert_eq!(count_spans(&[], true), Ok(0));
    }

    #[test]
    fn refuses_a_cut_message() {
        let body = request(&[&[3]]);
        assert!(count_spans(&body[..body.len() - 1], false).is_err());
    }
}
