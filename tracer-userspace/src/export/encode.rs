//! The OTLP export request encoded straight from our spans: protobuf fields written with
//! `prost`'s encoding primitives, numbered as in OpenTelemetry's `trace.proto`
//! (`opentelemetry-proto`). No message structs are built per span, so encoding a span costs
//! its attribute values and a few copies, not dozens of allocations. The unit test checks the
//! bytes against the same request built from the generated message types.

use prost::encoding::{WireType, encode_key, encode_varint};

use crate::correlate::{
    clock::Clock,
    span::{HttpSpan, Kind, Value},
};

/// Reusable buffers, one per nesting level.
#[derive(Default)]
pub struct Encoder {
    span: Vec<u8>,
    attribute: Vec<u8>,
    value: Vec<u8>,
    list: Vec<u8>,
    scope_spans: Vec<u8>,
    resource_spans: Vec<u8>,
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
        self.scope_spans.clear();
        len_field(SCOPE_SPANS_SCOPE, scope, &mut self.scope_spans);
        for span in spans {
            self.span(span, clock);
            len_field(SCOPE_SPANS_SPANS, &self.span, &mut self.scope_spans);
        }
        self.resource_spans.clear();
        len_field(RESOURCE_SPANS_RESOURCE, resource, &mut self.resource_spans);
        len_field(
            RESOURCE_SPANS_SCOPE_SPANS,
            &self.scope_spans,
            &mut self.resource_spans,
        );
        len_field(REQUEST_RESOURCE_SPANS, &self.resource_spans, out);
    }

    /// Encode `s` as a `Span` into `self.span`.
    fn span(&mut self, s: &HttpSpan, clock: &Clock) {
        let out = &mut self.span;
        out.clear();
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
        for (key, value) in s.attributes() {
            self.value.clear();
            match &value {
                // A oneof member is written even when it holds its default.
                Value::Str(v) => len_field(ANY_STRING, v.as_bytes(), &mut self.value),
                Value::Int(i) => {
                    encode_key(ANY_INT, WireType::Varint, &mut self.value);
                    encode_varint(*i as u64, &mut self.value);
                }
                Value::StrList(list) => {
                    self.list.clear();
                    for v in list {
                        let mut item = Vec::with_capacity(v.len() + 4);
                        len_field(ANY_STRING, v.as_bytes(), &mut item);
                        len_field(ARRAY_VALUES, &item, &mut self.list);
                    }
                    len_field(ANY_ARRAY, &self.list, &mut self.value);
                }
            }
            self.attribute.clear();
            nonempty_field(KEY_VALUE_KEY, key.as_bytes(), &mut self.attribute);
            len_field(KEY_VALUE_VALUE, &self.value, &mut self.attribute);
            len_field(SPAN_ATTRIBUTES, &self.attribute, out);
        }
        // Status: always present (empty when unset), as the SDK sends it.
        self.value.clear();
        if s.is_error() {
            nonempty_field(
                STATUS_MESSAGE,
                s.error_message().unwrap_or_default().as_bytes(),
                &mut self.value,
            );
            varint_field(STATUS_CODE, STATUS_ERROR, &mut self.value);
        }
        len_field(SPAN_STATUS, &self.value, out);
        fixed32_field(SPAN_FLAGS, span_flags(s), out);
    }
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
