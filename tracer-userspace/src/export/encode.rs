//! The OTLP export request encoded straight from our spans: protobuf fields written with
//! `prost`'s encoding primitives, numbered as in OpenTelemetry's `trace.proto`
//! (`opentelemetry-proto`). No message structs are built per span, so encoding a span costs
//! its attribute values and a few copies, not dozens of allocations. The unit test checks the
//! bytes against the same request built from the generated message types.

use prost::encoding::{WireType, encoded_len_varint};

/// A varint appended to a `Vec` directly (`prost`'s goes through `BufMut` a byte at a time,
/// and showed as a fifth of the encoder's time).
#[inline]
fn encode_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A field's key: its number and wire type.
#[inline]
fn encode_key(tag: u32, wire: WireType, out: &mut Vec<u8>) {
    encode_varint(u64::from(tag << 3 | wire as u32), out);
}

use crate::correlate::{
    clock::Clock,
    span::{Attr, HttpSpan, Kind},
};

/// Buffers reused from span to span.
#[derive(Default)]
pub struct Encoder {
    /// An attribute's `ArrayValue` (captured headers), built before its length is known.
    list: Vec<u8>,
    /// Attribute values the span formats (addresses, `url.full`).
    scratch: String,
}

/// A length-delimited field written in place: `body` appends the field's bytes to `out`
/// after room for a `room`-byte length, and the bytes move only when their length needs
/// another size. The result is the same as encoding the body apart.
fn nested(tag: u32, room: usize, out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    encode_key(tag, WireType::LengthDelimited, out);
    let at = out.len();
    out.resize(at + room, 0);
    body(out);
    let len = out.len() - at - room;
    let mut prefix = [0u8; 10];
    let size = encoded_len_varint(len as u64);
    let mut v = len as u64;
    for (i, b) in prefix[..size].iter_mut().enumerate() {
        *b = if i + 1 < size {
            v as u8 | 0x80
        } else {
            v as u8
        };
        v >>= 7;
    }
    if size == room {
        out[at..at + room].copy_from_slice(&prefix[..size]);
    } else {
        out.splice(at..at + room, prefix[..size].iter().copied());
    }
}

/// Room for a span's length (up to 16 KiB) and for a request's parts' (up to 2 MiB).
const SPAN_ROOM: usize = 2;
const BATCH_ROOM: usize = 3;

/// The encoded size of a length-delimited field of `len` bytes with a one-byte key.
fn len_field_size(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn len_field(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A proto3 string or bytes field: left out when empty.
fn nonempty_field(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    if !bytes.is_empty() {
        len_field(tag, bytes, out);
    }
}

fn varint_field(tag: u32, v: u64, out: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }
}

fn fixed64_field(tag: u32, v: u64, out: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn fixed32_field(tag: u32, v: u32, out: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::ThirtyTwoBit, out);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

// Field numbers, from opentelemetry/proto/trace/v1/trace.proto and common/v1/common.proto.
const REQUEST_RESOURCE_SPANS: u32 = 1;
const RESOURCE_SPANS_RESOURCE: u32 = 1;
const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
const SCOPE_SPANS_SCOPE: u32 = 1;
const SCOPE_SPANS_SPANS: u32 = 2;
const SPAN_TRACE_ID: u32 = 1;
const SPAN_SPAN_ID: u32 = 2;
const SPAN_TRACE_STATE: u32 = 3;
const SPAN_PARENT_SPAN_ID: u32 = 4;
const SPAN_NAME: u32 = 5;
const SPAN_KIND: u32 = 6;
const SPAN_START: u32 = 7;
const SPAN_END: u32 = 8;
const SPAN_ATTRIBUTES: u32 = 9;
const SPAN_STATUS: u32 = 15;
const SPAN_FLAGS: u32 = 16;
const STATUS_MESSAGE: u32 = 2;
const STATUS_CODE: u32 = 3;
const KEY_VALUE_KEY: u32 = 1;
const KEY_VALUE_VALUE: u32 = 2;
const ANY_STRING: u32 = 1;
const ANY_INT: u32 = 3;
const ANY_ARRAY: u32 = 5;
const ARRAY_VALUES: u32 = 1;
/// `SpanKind`: SERVER = 2, CLIENT = 3. `StatusCode`: ERROR = 2.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
const STATUS_ERROR: u64 = 2;
/// `SpanFlags`: the parent-is-remote bits.
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

impl Encoder {
    /// Append one `ResourceSpans` (an encoded `Resource`, an encoded `InstrumentationScope`,
    /// and `spans`) to the request being built in `out`.
    pub fn resource_spans<'a>(
        &mut self,
        resource: &[u8],
        scope: &[u8],
        spans: impl Iterator<Item = &'a HttpSpan>,
        clock: &Clock,
        out: &mut Vec<u8>,
    ) {
        let (list, scratch) = (&mut self.list, &mut self.scratch);
        nested(REQUEST_RESOURCE_SPANS, BATCH_ROOM, out, |out| {
            len_field(RESOURCE_SPANS_RESOURCE, resource, out);
            nested(RESOURCE_SPANS_SCOPE_SPANS, BATCH_ROOM, out, |out| {
                len_field(SCOPE_SPANS_SCOPE, scope, out);
                for span in spans {
                    nested(SCOPE_SPANS_SPANS, SPAN_ROOM, out, |out| {
                        encode_span(span, clock, list, scratch, out)
                    });
                }
            });
        });
    }
}

/// Encode `s` as the body of a `Span`, appended to `out`.
fn encode_span(
    s: &HttpSpan,
    clock: &Clock,
    list: &mut Vec<u8>,
    scratch: &mut String,
    out: &mut Vec<u8>,
) {
    nonempty_field(SPAN_TRACE_ID, &s.trace_id, out);
    nonempty_field(SPAN_SPAN_ID, &s.span_id, out);
    if let Some(state) = &s.tracestate {
        nonempty_field(SPAN_TRACE_STATE, state.as_bytes(), out);
    }
    if let Some(parent) = &s.parent_span_id {
        nonempty_field(SPAN_PARENT_SPAN_ID, parent, out);
    }
    nonempty_field(SPAN_NAME, s.name().as_bytes(), out);
    varint_field(
        SPAN_KIND,
        match s.kind {
            Kind::Server => KIND_SERVER,
            Kind::Client => KIND_CLIENT,
        },
        out,
    );
    fixed64_field(SPAN_START, clock.to_unix_nanos(s.start_ns), out);
    fixed64_field(SPAN_END, clock.to_unix_nanos(s.end_ns), out);
    s.visit_attributes(scratch, &mut |key, value| {
        // KeyValue { key = 1; value = 2 (AnyValue) }, sizes known before writing.
        let key_size = if key.is_empty() {
            0
        } else {
            len_field_size(key.len())
        };
        let any_size = match value {
            // A oneof member is written even when it holds its default.
            Attr::Str(v) => len_field_size(v.len()),
            Attr::Int(i) => 1 + encoded_len_varint(i as u64),
            Attr::StrList(values) => {
                list.clear();
                for v in values {
                    encode_key(ARRAY_VALUES, WireType::LengthDelimited, list);
                    encode_varint(len_field_size(v.len()) as u64, list);
                    len_field(ANY_STRING, v.as_bytes(), list);
                }
                len_field_size(list.len())
            }
        };
        encode_key(SPAN_ATTRIBUTES, WireType::LengthDelimited, out);
        encode_varint((key_size + len_field_size(any_size)) as u64, out);
        nonempty_field(KEY_VALUE_KEY, key.as_bytes(), out);
        encode_key(KEY_VALUE_VALUE, WireType::LengthDelimited, out);
        encode_varint(any_size as u64, out);
        match value {
            Attr::Str(v) => len_field(ANY_STRING, v.as_bytes(), out),
            Attr::Int(i) => {
                encode_key(ANY_INT, WireType::Varint, out);
                encode_varint(i as u64, out);
            }
            Attr::StrList(_) => len_field(ANY_ARRAY, list, out),
        }
    });
    // Status: always present (empty when unset), as the SDK sends it.
    if s.is_error() {
        let message = s.error_message().unwrap_or_default();
        let size = if message.is_empty() {
            0
        } else {
            len_field_size(message.len())
        } + 1
            + encoded_len_varint(STATUS_ERROR);
        encode_key(SPAN_STATUS, WireType::LengthDelimited, out);
        encode_varint(size as u64, out);
        nonempty_field(STATUS_MESSAGE, message.as_bytes(), out);
        varint_field(STATUS_CODE, STATUS_ERROR, out);
    } else {
        len_field(SPAN_STATUS, &[], out);
    }
    fixed32_field(SPAN_FLAGS, span_flags(s), out);
}

/// The span's `flags`: the W3C trace flags, and whether its parent is remote, which is always
/// known here: only a parent in another process is (one that came with the request, or a
/// traced client elsewhere on this host); an in-process parent and no parent are not.
pub fn span_flags(s: &HttpSpan) -> u32 {
    let remote = s.parent_span_id.is_some() && s.parent_remote;
    s.trace_flags as u32 | FLAG_HAS_IS_REMOTE | if remote { FLAG_IS_REMOTE } else { 0 }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::SpanFlags;

    use super::*;
    use crate::correlate::span::tests::sample;

    #[test]
    fn only_a_parent_in_another_process_is_remote() {
        let has = SpanFlags::ContextHasIsRemoteMask as u32;
        let is = SpanFlags::ContextIsRemoteMask as u32;
        let mut s = sample(Kind::Server);
        assert_eq!(
            span_flags(&s),
            0x01 | has,
            "a root span: its parent is not remote"
        );
        s.parent_span_id = Some([9; 8]);
        s.parent_remote = true;
        assert_eq!(
            span_flags(&s),
            0x01 | has | is,
            "from a traceparent or another process"
        );
        let mut c = sample(Kind::Client);
        c.parent_span_id = Some([9; 8]);
        c.parent_remote = false;
        assert_eq!(
            span_flags(&c),
            0x01 | has,
            "the server span of the same thread"
        );
    }
}
