//! Recordings: the raw events the probes captured, with what is needed to turn them into the
//! same spans offline (the clock offset and the processes' names).
//!
//! Format, version 1 (little-endian):
//!
//! ```text
//! file    = "TRACEREC" version:u16 event_header_len:u16 clock_offset_ns:i64 record*
//! record  = type:u8 len:u32 body[len]
//! type 1  = an event exactly as the ring buffer held it (EventHeader, then payload)
//! type 2  = a process: pid:u32 then three strings (u16 length + UTF-8): comm,
//!           executable name, executable path (empty when unknown)
//! ```
//!
//! A process record comes before the first event of its process.

use std::{
    collections::HashSet,
    io::{self, Read, Write},
};

use tracer_common::EVENT_HEADER_LEN;

use super::event::{DecodeError, Event};
use crate::correlate::process::Process;

const MAGIC: &[u8; 8] = b"TRACEREC";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;
const TYPE_EVENT: u8 = 1;
const TYPE_PROCESS: u8 = 2;
/// Largest record accepted when reading (an event is at most a header and 8 KiB).
const MAX_RECORD: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a tracer recording (bad magic)")]
    Magic,
    #[error("recording format version {0} is not supported (this tracer reads version {VERSION})")]
    Version(u16),
    #[error("recording has {0}-byte event headers; this tracer expects {EVENT_HEADER_LEN}")]
    HeaderLen(u16),
    #[error("corrupt recording: {0}")]
    Corrupt(String),
    #[error("corrupt event in recording: {0}")]
    Event(#[from] DecodeError),
}

/// Writes a recording.
pub struct Recorder<W: Write> {
    out: W,
    seen: HashSet<u32>,
    pub events: u64,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    buf.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    buf.extend_from_slice(bytes);
}

impl<W: Write> Recorder<W> {
    pub fn new(mut out: W, clock_offset_ns: i64) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&(EVENT_HEADER_LEN as u16).to_le_bytes())?;
        out.write_all(&clock_offset_ns.to_le_bytes())?;
        Ok(Recorder {
            out,
            seen: HashSet::new(),
            events: 0,
        })
    }

    fn record(&mut self, kind: u8, body: &[u8]) -> io::Result<()> {
        self.out.write_all(&[kind])?;
        self.out.write_all(&(body.len() as u32).to_le_bytes())?;
        self.out.write_all(body)
    }

    /// Append one raw event; `describe` names its process the first time it is seen.
    pub fn event(
        &mut self,
        raw: &[u8],
        describe: impl FnOnce(u32, &str) -> Process,
    ) -> io::Result<()> {
        if let Ok(ev) = Event::decode(raw)
            && self.seen.insert(ev.header.tgid)
        {
            let comm = super::event::comm_str(&ev.header.comm).to_string();
            let p = describe(ev.header.tgid, &comm);
            let mut body = p.pid.to_le_bytes().to_vec();
            put_str(&mut body, &p.comm);
            put_str(&mut body, &p.executable_name);
            put_str(&mut body, p.executable_path.as_deref().unwrap_or(""));
            // Added later: readers of older recordings find the record ending here.
            for field in [
                &p.service.name,
                &p.service.namespace,
                &p.service.version,
                &p.container_id,
            ] {
                put_str(&mut body, field.as_deref().unwrap_or(""));
            }
            self.record(TYPE_PROCESS, &body)?;
        }
        self.events += 1;
        self.record(TYPE_EVENT, raw)
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// One item of a recording.
pub enum Item {
    Event(Vec<u8>),
    Process(Process),
}

/// Reads a recording.
pub struct Replay<R: Read> {
    input: R,
    pub clock_offset_ns: i64,
}

fn take_str(body: &[u8], at: &mut usize) -> Result<String, RecordError> {
    let corrupt = || RecordError::Corrupt("truncated process record".into());
    let len = body.get(*at..*at + 2).ok_or_else(corrupt)?;
    let len = u16::from_le_bytes([len[0], len[1]]) as usize;
    let s = body.get(*at + 2..*at + 2 + len).ok_or_else(corrupt)?;
    *at += 2 + len;
    Ok(String::from_utf8_lossy(s).to_string())
}

impl<R: Read> Replay<R> {
    pub fn new(mut input: R) -> Result<Self, RecordError> {
        let mut head = [0u8; 20];
        input
            .read_exact(&mut head)
            .map_err(|_| RecordError::Magic)?;
        if &head[..8] != MAGIC {
            return Err(RecordError::Magic);
        }
        let version = u16::from_le_bytes([head[8], head[9]]);
        if version != VERSION {
            return Err(RecordError::Version(version));
        }
        let header_len = u16::from_le_bytes([head[10], head[11]]);
        if header_len as usize != EVENT_HEADER_LEN {
            return Err(RecordError::HeaderLen(header_len));
        }
        let clock_offset_ns = i64::from_le_bytes(head[12..20].try_into().expect("8 bytes"));
        Ok(Replay {
            input,
            clock_offset_ns,
        })
    }

    /// The next item, or `None` at the end of the recording.
    pub fn next_item(&mut self) -> Result<Option<Item>, RecordError> {
        let mut head = [0u8; 5];
        match self.input.read_exact(&mut head[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        self.input
            .read_exact(&mut head[1..])
            .map_err(|_| RecordError::Corrupt("truncated record header".into()))?;
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            return Err(RecordError::Corrupt(format!("record of {len} bytes")));
        }
        let mut body = vec![0u8; len as usize];
        self.input
            .read_exact(&mut body)
            .map_err(|_| RecordError::Corrupt("truncated record".into()))?;
        match head[0] {
            TYPE_EVENT => {
                Event::decode(&body)?;
                Ok(Some(Item::Event(body)))
            }
            TYPE_PROCESS => {
                let pid_bytes = body
                    .get(..4)
                    .ok_or_else(|| RecordError::Corrupt("truncated process record".into()))?;
                let pid = u32::from_le_bytes(pid_bytes.try_into().expect("4 bytes"));
                let mut at = 4;
                let comm = take_str(&body, &mut at)?;
                let executable_name = take_str(&body, &mut at)?;
                let path = take_str(&body, &mut at)?;
                // The service fields, when the recording has them.
                let mut service = [None, None, None];
                if at < body.len() {
                    for slot in &mut service {
                        let v = take_str(&body, &mut at)?;
                        *slot = (!v.is_empty()).then_some(v);
                    }
                }
                let [name, namespace, version] = service;
                // The container id, when the recording has it.
                let mut container_id = None;
                if at < body.len() {
                    let v = take_str(&body, &mut at)?;
                    container_id = (!v.is_empty()).then_some(v);
                }
                Ok(Some(Item::Process(Process {
                    pid,
                    comm,
                    executable_name,
                    executable_path: (!path.is_empty()).then_some(path),
                    service: crate::correlate::process::Service {
                        name,
                        namespace,
                        version,
                    },
                    container_id,
                })))
            }
            other => Err(RecordError::Corrupt(format!("unknown record type {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::{EventHeader, kind};

    use super::*;

    fn raw(tgid: u32, payload: &[u8]) -> Vec<u8> {
        let h = EventHeader {
            kind: kind::DATA,
            tgid,
            captured_len: payload.len() as u32,
            total_len: payload.len() as u64,
            ..Default::default()
        };
        let mut v = vec![0u8; EVENT_HEADER_LEN];
        // SAFETY: the vector holds one header's worth of bytes.
        unsafe { std::ptr::write_unaligned(v.as_mut_ptr().cast::<EventHeader>(), h) };
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn round_trip() {
        let mut rec = Recorder::new(Vec::new(), -42).unwrap();
        let describe = |pid, comm: &str| Process {
            pid,
            comm: comm.to_string(),
            executable_name: format!("exe{pid}"),
            executable_path: None,
            service: crate::correlate::process::Service {
                name: (pid == 9).then(|| "svc".to_string()),
                namespace: None,
                version: (pid == 9).then(|| "2".to_string()),
            },
            container_id: (pid == 9).then(|| "c0ffee".to_string()),
        };
        rec.event(&raw(7, b"GET /"), describe).unwrap();
        rec.event(&raw(7, b"more"), describe).unwrap();
        rec.event(&raw(9, b""), describe).unwrap();
        let bytes = rec.finish().unwrap();

        let mut rp = Replay::new(bytes.as_slice()).unwrap();
        assert_eq!(rp.clock_offset_ns, -42);
        let mut kinds = Vec::new();
        while let Some(item) = rp.next_item().unwrap() {
            kinds.push(match item {
                Item::Process(p) => format!(
                    "p{}:{}:{}:{}:{}",
                    p.pid,
                    p.executable_name,
                    p.service_name(),
                    p.service.version.as_deref().unwrap_or("-"),
                    p.container_id.as_deref().unwrap_or("-")
                ),
                Item::Event(e) => format!("e{}", Event::decode(&e).unwrap().payload.len()),
            });
        }
        assert_eq!(
            kinds,
            vec!["p7:exe7:exe7:-:-", "e5", "e4", "p9:exe9:svc:2:c0ffee", "e0"]
        );
    }

    #[test]
    fn rejects_foreign_and_future_files() {
        assert!(matches!(
            Replay::new(&b"GIF89a................"[..]),
            Err(RecordError::Magic)
        ));
        let mut v = Recorder::new(Vec::new(), 0).unwrap().finish().unwrap();
        v[8] = 9;
        assert!(matches!(
            Replay::new(v.as_slice()),
            Err(RecordError::Version(9))
        ));
        let mut rec = Recorder::new(Vec::new(), 0).unwrap();
        rec.event(&raw(1, b"abc"), |pid, _| Process::read(pid, "x"))
            .unwrap();
        let mut v = rec.finish().unwrap();
        v.truncate(v.len() - 2);
        let mut rp = Replay::new(v.as_slice()).unwrap();
        assert!(rp.next_item().is_ok(), "the process record is whole");
        assert!(matches!(rp.next_item(), Err(RecordError::Corrupt(_))));
    }
}
