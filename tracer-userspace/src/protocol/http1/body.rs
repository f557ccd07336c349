//! HTTP/1.x message bodies: where they end. Bytes are counted, never kept.

/// How a message's body is delimited (RFC 9112, section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: HEAD responses, 1xx/204/304, requests without length.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding: ends with the zero-size chunk and its trailers.
    Chunked,
    /// Everything until the connection closes.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
}

/// Progress through a body, fed in slices as they arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    framing: Framing,
    /// Remaining bytes of a `Length` body or of the current chunk's data.
    remaining: u64,
    phase: Phase,
    size_digits: u8,
    /// Body bytes counted so far (payload bytes for chunked bodies, framing excluded).
    pub size: u64,
}

/// The result of feeding bytes to a [`Body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// All bytes belonged to the body; more is expected.
    More,
    /// The body ended after this many of the fed bytes.
    Done(usize),
    /// The bytes do not follow the framing (corrupt, or a gap hid the chunk framing).
    Lost,
}

impl Body {
    pub fn new(framing: Framing) -> Self {
        let remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Body {
            framing,
            remaining,
            phase: Phase::Size,
            size_digits: 0,
            size: 0,
        }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// After [`Body::skip`] returned `Lost`: the body's size if it is known to have ended
    /// inside the skipped bytes (a length-delimited body).
    pub fn ended_in_gap(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(_) => Some(self.size),
            _ => None,
        }
    }

    /// Whether nothing more is expected (an empty or zero-length body).
    pub fn is_done(&self) -> bool {
        matches!(self.framing, Framing::Empty) || self.framing == Framing::Length(0)
    }

    /// Feed bytes that were seen.
    pub fn feed(&mut self, data: &[u8]) -> Fed {
        match self.framing {
            Framing::Empty => Fed::Done(0),
            Framing::UntilClose => {
                self.size += data.len() as u64;
                Fed::More
            }
            Framing::Length(_) => {
                let take = self.remaining.min(data.len() as u64);
                self.remaining -= take;
                self.size += take;
                if self.remaining == 0 {
                    Fed::Done(take as usize)
                } else {
                    Fed::More
                }
            }
            Framing::Chunked => self.feed_chunked(data),
        }
    }

    /// Account for `n` bytes that moved but were not captured. Exact for length-delimited
    /// bodies and inside chunk data; anywhere else the framing is lost.
    pub fn skip(&mut self, n: u64) -> Fed {
        match self.framing {
            Framing::Empty => Fed::Done(0),
            Framing::UntilClose => {
                self.size += n;
                Fed::More
            }
            Framing::Length(_) => {
                if n > self.remaining {
                    // The gap holds the end of this body and the start of something else.
                    self.size += self.remaining;
                    self.remaining = 0;
                    return Fed::Lost;
                }
                self.remaining -= n;
                self.size += n;
                if self.remaining == 0 {
                    Fed::Done(0)
                } else {
                    Fed::More
                }
            }
            Framing::Chunked if self.phase == Phase::Data && n <= self.remaining => {
                self.remaining -= n;
                self.size += n;
                if self.remaining == 0 {
                    self.phase = Phase::DataCr;
                }
                Fed::More
            }
            Framing::Chunked => Fed::Lost,
        }
    }

    fn feed_chunked(&mut self, data: &[u8]) -> Fed {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.phase {
                Phase::Size => match (b as char).to_digit(16) {
                    Some(d) if self.size_digits < 16 => {
                        self.remaining = (self.remaining << 4) | d as u64;
                        self.size_digits += 1;
                    }
                    _ if self.size_digits == 0 => return Fed::Lost,
                    _ if b == b';' || b == b' ' || b == b'\t' => self.phase = Phase::Extension,
                    _ if b == b'\r' => self.phase = Phase::SizeLf,
                    _ => return Fed::Lost,
                },
                Phase::Extension => {
                    if b == b'\r' {
                        self.phase = Phase::SizeLf;
                    }
                }
                Phase::SizeLf => {
                    if b != b'\n' {
                        return Fed::Lost;
                    }
                    self.size_digits = 0;
                    self.phase = if self.remaining == 0 {
                        Phase::TrailerStart
                    } else {
                        Phase::Data
                    };
                }
                Phase::Data => {
                    let take = self.remaining.min((data.len() - i) as u64);
                    self.remaining -= take;
                    self.size += take;
                    i += take as usize;
                    if self.remaining == 0 {
                        self.phase = Phase::DataCr;
                    }
                    continue;
                }
                Phase::DataCr => {
                    if b != b'\r' {
                        return Fed::Lost;
                    }
                    self.phase = Phase::DataLf;
                }
                Phase::DataLf => {
                    if b != b'\n' {
                        return Fed::Lost;
                    }
                    self.phase = Phase::Size;
                }
                Phase::TrailerStart => {
                    self.phase = if b == b'\r' {
                        Phase::FinalLf
                    } else {
                        Phase::TrailerLine
                    };
                }
                Phase::TrailerLine => {
                    if b == b'\r' {
                        self.phase = Phase::TrailerLf;
                    }
                }
                Phase::TrailerLf => {
                    if b != b'\n' {
                        return Fed::Lost;
                    }
                    self.phase = Phase::TrailerStart;
                }
                Phase::FinalLf => {
                    return if b == b'\n' {
                        Fed::Done(i + 1)
                    } else {
                        Fed::Lost
                    };
                }
            }
            i += 1;
        }
        Fed::More
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_body_ends_exactly() {
        let mut b = Body::new(Framing::Length(5));
        assert_eq!(b.feed(b"abc"), Fed::More);
        assert_eq!(b.feed(b"deGET"), Fed::Done(2));
        assert_eq!(b.size, 5);
    }

    #[test]
    fn length_body_counts_uncaptured_bytes() {
        let mut b = Body::new(Framing::Length(10_000_000));
        assert_eq!(b.feed(&[0; 100]), Fed::More);
        assert_eq!(b.skip(9_999_800), Fed::More);
        assert_eq!(b.skip(100), Fed::Done(0));
        assert_eq!(b.size, 10_000_000);
    }

    #[test]
    fn chunked_body_in_any_split() {
        let raw = b"4\r\nWiki\r\n6;ext=1\r\npedia \r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for split in 0..raw.len() {
            let mut b = Body::new(Framing::Chunked);
            let (a, c) = raw.split_at(split);
            let done = match b.feed(a) {
                Fed::Done(n) => n,
                Fed::More => {
                    split
                        + match b.feed(c) {
                            Fed::Done(n) => n,
                            other => panic!("split {split}: {other:?}"),
                        }
                }
                Fed::Lost => panic!("split {split}: lost"),
            };
            assert_eq!(&raw[done..], b"NEXT", "split {split}");
            assert_eq!(b.size, 10);
        }
    }

    #[test]
    fn chunked_body_survives_gaps_inside_data() {
        let mut b = Body::new(Framing::Chunked);
        assert_eq!(b.feed(b"10\r\nabcd"), Fed::More);
        assert_eq!(b.skip(12), Fed::More);
        assert_eq!(b.feed(b"\r\n0\r\n\r\n"), Fed::Done(7));
        assert_eq!(b.size, 16);
        // A gap over framing bytes cannot be followed.
        let mut b = Body::new(Framing::Chunked);
        assert_eq!(b.feed(b"2\r\nab"), Fed::More);
        assert_eq!(b.skip(50), Fed::Lost);
    }

    #[test]
    fn garbage_in_chunk_framing_is_lost() {
        assert_eq!(Body::new(Framing::Chunked).feed(b"zz\r\n"), Fed::Lost);
        assert_eq!(Body::new(Framing::Chunked).feed(b"1\r\naX"), Fed::Lost);
    }
}
