//! HTTP/2 frames past the capture window. A syscall that moved more than was copied may hold
//! frames the agent needs beyond the copied bytes: a HEADERS frame behind a large DATA frame,
//! a hundred requests in one `writev`. This walk goes from frame header to frame header
//! through the syscall's buffer in user memory (one buffer or an iovec array) and sends, just
//! before the syscall's event, a `FRAMES` event with the pieces the agent lacks: the header of
//! every frame that starts past the copied bytes, and the payload of those that carry header
//! blocks, settings or stream ends. DATA payloads are never copied.
//!
//! The walk starts where the connection's last walked syscall left its last frame, or at the
//! buffer's start, and stops at the first header that cannot be a frame's. It needs no
//! certainty: the agent takes a piece only at an offset where its own reading of the stream
//! expects a frame header, and the piece holds the bytes found there. Bytes that are not
//! HTTP/2 stop the walk at its first header.

use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_probe_read_user, bpf_ringbuf_output},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use tracer_common::{EventHeader, FRAMES_MAX, direction, kind};

use crate::maps::{EVENTS, MODE_IOV, MODE_PLAIN, SCRATCH, count};

/// Payload bytes of one kept frame copied at most (header blocks are far smaller).
const KEPT_MAX: u32 = 2048;
/// Bytes read from user memory at a time when copying a payload.
const COPY_STEP: u32 = 256;
/// Steps of one walk at most: each reads a header, copies up to `COPY_STEP` bytes or moves to
/// the next iovec.
const MAX_STEPS: u32 = 4096;
/// A piece's own header: its offset in the syscall's bytes (u32) and its length (u16).
const PIECE_HEADER: u32 = 6;
const FRAME_HEADER: u32 = 9;

const HEADER: u32 = 0;
const COPY: u32 = 1;
const SKIP: u32 = 2;

/// A `FRAMES` event: its header and pieces. Twice the room, so that bounded offsets stay
/// provably inside.
#[repr(C)]
pub struct FramesEvent {
    pub header: EventHeader,
    pub data: [u8; FRAMES_MAX * 2],
}

/// Where a walk stands, in map memory (the `bpf_loop` step reads it from there).
#[repr(C)]
pub struct Walk {
    pub event: FramesEvent,
    /// The buffer (`MODE_PLAIN`) or the iovec array (`MODE_IOV`), and the iovec count.
    pub user: u64,
    pub iovcnt: u64,
    pub mode: u32,
    /// Bytes the syscall moved, and copied into its event.
    pub total: u32,
    pub captured: u32,
    /// The offset the walk is at.
    pub off: u32,
    /// Bytes of pieces written.
    pub used: u32,
    /// The user memory segment that holds `off`: its offsets, its address, its index.
    pub seg_start: u32,
    pub seg_end: u32,
    pub seg_ptr: u64,
    pub seg_idx: u32,
    pub phase: u32,
    /// Frame header bytes gathered.
    pub have: u32,
    /// Payload bytes left to copy (COPY) or to pass (SKIP), and to pass after the copy.
    pub left: u32,
    pub after: u32,
    /// Frames found, whether the walk went back to the start, and whether it ended on a
    /// frame boundary.
    pub frames: u32,
    pub restarted: u32,
    pub clean: u32,
    /// The pieces' room ran out.
    pub full: u32,
    pub hdr: [u8; 32],
}

#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// Per connection and direction (`struct sock` address, low bit set for egress): how many
/// bytes of its last frame the last walked syscall left to the next.
#[map]
static CURSORS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

/// Where exit programs leave the syscall's user memory for [`beyond_window`].
#[inline(always)]
pub fn set_source(user: u64, mode: u8, iovcnt: u64) {
    if let Some(w) = WALK.get_ptr_mut(0) {
        unsafe {
            (*w).user = user;
            (*w).mode = mode as u32;
            (*w).iovcnt = iovcnt;
        }
    }
}

/// Whether a frame header can be one: a known type, on the stream its type belongs to, of a
/// length its type allows, with the reserved bit clear.
#[inline(always)]
fn plausible(h: &[u8; 32]) -> Option<(u32, u8)> {
    let len = ((h[0] as u32) << 16) | ((h[1] as u32) << 8) | h[2] as u32;
    let t = h[3];
    if h[5] & 0x80 != 0 {
        return None;
    }
    let on_stream = (h[5] | h[6] | h[7] | h[8]) != 0;
    let ok = match t {
        // DATA, HEADERS, PUSH_PROMISE, CONTINUATION
        0 | 1 | 5 | 9 => on_stream,
        2 => on_stream && len == 5,
        3 => on_stream && len == 4,
        4 => !on_stream && len % 6 == 0,
        6 => !on_stream && len == 8,
        7 => !on_stream && len >= 8,
        8 => len == 4,
        _ => false,
    };
    ok.then_some((len, t))
}

/// Whether the agent keeps a frame of this type whole.
#[inline(always)]
fn kept(t: u8) -> bool {
    matches!(t, 1 | 3 | 4 | 5 | 7 | 9)
}

/// Move the walk's segment forward to the one holding `off`: one iovec per step. Returns
/// false when there is none.
#[inline(always)]
fn next_segment(w: &mut Walk) -> bool {
    let idx = w.seg_idx.wrapping_add(1);
    if idx as u64 >= w.iovcnt {
        return false;
    }
    if w.mode == MODE_PLAIN as u32 {
        w.seg_start = 0;
        w.seg_end = w.total;
        w.seg_ptr = w.user;
    } else {
        let ptr = (w.user + idx as u64 * 16) as *const [u64; 2];
        let Ok(iov) = (unsafe { aya_ebpf::helpers::bpf_probe_read_user(ptr) }) else {
            return false;
        };
        w.seg_start = w.seg_end;
        w.seg_end = w
            .seg_end
            .saturating_add(core::cmp::min(iov[1], u32::MAX as u64) as u32);
        w.seg_ptr = iov[0];
    }
    w.seg_idx = idx;
    true
}

/// Back to the first byte.
#[inline(always)]
fn rewind(w: &mut Walk) {
    w.off = 0;
    w.seg_start = 0;
    w.seg_end = 0;
    w.seg_idx = u32::MAX;
    w.phase = HEADER;
    w.have = 0;
}

/// One step of the walk. Returns 1 to stop.
extern "C" fn walk_step(_k: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(w) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    let w = unsafe { &mut *w };
    if w.phase == SKIP {
        w.off = w.off.saturating_add(w.left);
        w.left = 0;
        w.phase = HEADER;
        return 0;
    }
    if w.off >= w.total {
        w.clean = u32::from(w.phase == HEADER && w.have == 0);
        return 1;
    }
    if w.off >= w.seg_end || w.off < w.seg_start {
        return if next_segment(w) { 0 } else { 1 };
    }
    let src = w.seg_ptr + (w.off - w.seg_start) as u64;
    let room = w.seg_end - w.off;
    if w.phase == HEADER {
        let n = core::cmp::min(FRAME_HEADER - (w.have & 15), room) & 15;
        let dst = unsafe { w.hdr.as_mut_ptr().add((w.have & 15) as usize) };
        if unsafe { bpf_probe_read_user(dst.cast(), n, src as *const _) } != 0 {
            return 1;
        }
        w.have += n;
        w.off += n;
        if w.have < FRAME_HEADER {
            return 0;
        }
        w.have = 0;
        let Some((len, t)) = plausible(&w.hdr) else {
            if w.frames == 0 && w.restarted == 0 {
                // The connection's cursor was stale: try from the first byte.
                w.restarted = 1;
                rewind(w);
                return 0;
            }
            return 1;
        };
        w.frames += 1;
        let at = w.off - FRAME_HEADER;
        let copy = if kept(t) {
            core::cmp::min(len, KEPT_MAX)
        } else {
            0
        };
        let end = at as u64 + FRAME_HEADER as u64 + if kept(t) { len as u64 } else { 0 };
        w.phase = SKIP;
        w.left = len;
        if end <= w.captured as u64 {
            return 0;
        }
        // A piece: offset, length, the header, then the payload if kept.
        let size = PIECE_HEADER + FRAME_HEADER + copy;
        if w.used + size > FRAMES_MAX as u32 {
            w.full = 1;
            return 1;
        }
        let piece_len = FRAME_HEADER + copy;
        let mut head = [0u8; 16];
        head[..4].copy_from_slice(&at.to_le_bytes());
        head[4..6].copy_from_slice(&(piece_len as u16).to_le_bytes());
        head[6..15].copy_from_slice(&w.hdr[..9]);
        let base = (w.used & (FRAMES_MAX as u32 - 1)) as usize;
        let mut i = 0;
        while i < 15 {
            w.event.data[(base + i) & (FRAMES_MAX * 2 - 1)] = head[i];
            i += 1;
        }
        w.used += PIECE_HEADER + FRAME_HEADER;
        if copy > 0 {
            w.phase = COPY;
            w.left = copy;
            w.after = len - copy;
        }
        return 0;
    }
    // COPY
    let n = core::cmp::min(core::cmp::min(w.left, room), COPY_STEP) & (COPY_STEP * 2 - 1);
    let dst = unsafe {
        w.event
            .data
            .as_mut_ptr()
            .add((w.used & (FRAMES_MAX as u32 - 1)) as usize)
    };
    if unsafe { bpf_probe_read_user(dst.cast(), n, src as *const _) } != 0 {
        return 1;
    }
    w.used += n;
    w.off += n;
    w.left -= core::cmp::min(n, w.left);
    if w.left == 0 {
        w.phase = SKIP;
        w.left = w.after;
    }
    0
}

/// Walk the frames of the syscall whose event is in the scratch buffer, when it moved more
/// than it copied, and send the pieces found past the copied bytes.
#[inline(always)]
pub fn beyond_window() {
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let header = unsafe { &(*buf).header };
    if header.total_len <= header.captured_len as u64 {
        return;
    }
    let Some(w) = WALK.get_ptr_mut(0) else {
        return;
    };
    let w = unsafe { &mut *w };
    if w.mode != MODE_PLAIN as u32 && w.mode != MODE_IOV as u32 {
        return;
    }
    if w.mode == MODE_PLAIN as u32 {
        w.iovcnt = 1;
    }
    let key = header.sock | u64::from(header.direction == direction::EGRESS);
    w.total = core::cmp::min(header.total_len, u32::MAX as u64) as u32;
    w.captured = header.captured_len;
    w.used = 0;
    w.frames = 0;
    // Going back to the first byte is for a walk that started elsewhere.
    w.restarted = 1;
    w.clean = 0;
    w.full = 0;
    rewind(w);
    if let Some(&left) = unsafe { CURSORS.get(&key) } {
        if left >= w.total {
            // All of it is inside the frame the last syscall began.
            let _ = CURSORS.insert(&key, &(left - w.total), 0);
            return;
        }
        if left > 0 {
            // Start on the frame after the one the last syscall left unfinished; the
            // segments up to there are passed through as the walk goes.
            w.phase = SKIP;
            w.left = left;
            w.restarted = 0;
        }
    }
    let steps = unsafe {
        bpf_loop(
            MAX_STEPS,
            walk_step as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    let Some(w) = WALK.get_ptr_mut(0) else {
        return;
    };
    let w = unsafe { &mut *w };
    if w.full != 0 || (steps >= MAX_STEPS as i64 && w.clean == 0) {
        count(tracer_common::counter::FRAMES_NOT_COPIED);
    }
    if w.clean != 0 {
        let _ = CURSORS.insert(&key, &(w.off - w.total), 0);
    } else {
        let _ = CURSORS.remove(&key);
    }
    if w.used == 0 {
        return;
    }
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    w.event.header = unsafe { (*buf).header };
    w.event.header.kind = kind::FRAMES;
    w.event.header.captured_len = w.used;
    let len = core::mem::size_of::<EventHeader>() + (w.used as usize & (FRAMES_MAX * 2 - 1));
    // The helper itself: one more caller of the ring buffer's generic `output` makes the
    // compiler share one copy of it between programs, which the verifier then rejects in
    // the TLS programs.
    let ret = unsafe {
        bpf_ringbuf_output(
            core::ptr::addr_of!(EVENTS) as *mut core::ffi::c_void,
            (&w.event as *const FramesEvent).cast_mut().cast(),
            len as u64,
            aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64,
        )
    };
    if ret == 0 {
        count(tracer_common::counter::EVENTS);
    } else {
        count(tracer_common::counter::RINGBUF_FULL);
    }
}
