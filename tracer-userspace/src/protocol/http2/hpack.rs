//! HPACK (RFC 7541): the header blocks of one direction of one HTTP/2 connection, decoded
//! exactly as far as they can be, never guessed.
//!
//! A decoder can start late (the agent started while the connection was open) or lose track
//! (a header block it did not see, a malformed one): the dynamic table then holds entries it
//! never saw. Indices count from the newest entry, so every entry inserted since the decoder
//! started (or last lost track) is still found at its exact index; an index past them names an
//! entry that was inserted before, and decodes as unknown ([`Field`] with `None`s). The size of
//! the real table is not known then either; entries are kept while their size (a lower bound
//! where a name is unknown) fits the table's limit, so none the peer may still use is dropped.
//!
//! Every input is handled without a panic: lengths and integers are checked, the output and
//! the table are bounded.

use std::collections::VecDeque;

/// Header fields a block gives at most; the rest are decoded (the table must stay right) but
/// not returned.
pub const MAX_FIELDS: usize = 128;
/// The largest dynamic table kept, whatever a peer announces (bytes, as RFC 7541 counts them).
pub const MAX_TABLE: usize = 64 * 1024;
/// RFC 7541's initial table size (SETTINGS_HEADER_TABLE_SIZE's default).
pub const DEFAULT_TABLE: usize = 4096;
/// What an entry costs beyond its name and value.
const ENTRY_OVERHEAD: usize = 32;

/// A decoded header field. `None` is a name or value the decoder cannot know: it was in the
/// dynamic table before the decoder started (or lost track).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Why a block could not be decoded. The decoder has then lost track of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The block ends inside a representation.
    Truncated,
    /// An integer longer than any length or index can be.
    Integer,
    /// Index 0, which names nothing.
    ZeroIndex,
    /// A string's Huffman code is invalid.
    Huffman,
    /// A table size update above what the decoder allows.
    TableSize,
}

/// What a block gave.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Block {
    pub fields: Vec<Field>,
    /// Fields past [`MAX_FIELDS`], decoded but not returned.
    pub dropped: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    name: Option<Box<[u8]>>,
    value: Box<[u8]>,
}

impl Entry {
    /// Its size as RFC 7541 counts it; a lower bound when its name is unknown.
    fn size(&self) -> usize {
        self.name.as_ref().map_or(0, |n| n.len()) + self.value.len() + ENTRY_OVERHEAD
    }
}

/// One direction's dynamic table, as far as it is known.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first.
    entries: VecDeque<Entry>,
    size: usize,
    /// The table's size as the encoder last set it, when known.
    max: Option<usize>,
    /// The most the encoder may use (the receiving side's SETTINGS_HEADER_TABLE_SIZE).
    limit: usize,
    /// The table may hold entries this decoder never saw.
    partial: bool,
}

impl Decoder {
    /// A decoder that saw the connection start (`from_start`), or that joins it late.
    pub fn new(from_start: bool) -> Self {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max: from_start.then_some(DEFAULT_TABLE),
            limit: DEFAULT_TABLE,
            partial: !from_start,
        }
    }

    /// The receiving side announced SETTINGS_HEADER_TABLE_SIZE: the most this table may grow.
    pub fn set_limit(&mut self, limit: u32) {
        self.limit = (limit as usize).min(MAX_TABLE);
    }

    /// Whether the table may hold entries this decoder never saw.
    pub fn is_partial(&self) -> bool {
        self.partial
    }

    /// A header block of this direction was not seen (or not whole): from here on, entries
    /// already in the table are unknown; those inserted later are known again.
    pub fn lost_track(&mut self) {
        self.entries.clear();
        self.size = 0;
        self.max = None;
        self.partial = true;
    }

    /// Decode one whole header block (the fragments of a HEADERS frame and its CONTINUATIONs
    /// joined). On an error the decoder has lost track (see [`Decoder::lost_track`]).
    pub fn decode(&mut self, block: &[u8]) -> Result<Block, Error> {
        let r = self.decode_all(block);
        if r.is_err() {
            self.lost_track();
        }
        r
    }

    fn decode_all(&mut self, block: &[u8]) -> Result<Block, Error> {
        let mut out = Block::default();
        let mut input = Input { data: block, at: 0 };
        while let Some(first) = input.peek() {
            let field = if first & 0x80 != 0 {
                // Indexed field.
                let index = input.integer(7)?;
                self.field(index)?
            } else if first & 0xc0 == 0x40 {
                // Literal with incremental indexing.
                let index = input.integer(6)?;
                let name = self.name(index, &mut input)?;
                let value = input.string()?;
                self.insert(name.clone(), value.clone());
                Field {
                    name,
                    value: Some(value),
                }
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update.
                let size = input.integer(5)?;
                if size > self.limit {
                    return Err(Error::TableSize);
                }
                self.max = Some(size);
                self.evict(size);
                continue;
            } else {
                // Literal without indexing, or never indexed.
                let index = input.integer(4)?;
                let name = self.name(index, &mut input)?;
                Field {
                    name,
                    value: Some(input.string()?),
                }
            };
            if out.fields.len() < MAX_FIELDS {
                out.fields.push(field);
            } else {
                out.dropped += 1;
            }
        }
        Ok(out)
    }

    /// The field at `index` (static table first, then the dynamic table, newest first).
    fn field(&self, index: usize) -> Result<Field, Error> {
        if index == 0 {
            return Err(Error::ZeroIndex);
        }
        if let Some(&(name, value)) = STATIC.get(index - 1) {
            return Ok(Field {
                name: Some(name.as_bytes().to_vec()),
                value: Some(value.as_bytes().to_vec()),
            });
        }
        Ok(match self.entries.get(index - STATIC.len() - 1) {
            Some(e) => Field {
                name: e.name.as_deref().map(<[u8]>::to_vec),
                value: Some(e.value.to_vec()),
            },
            None => Field {
                name: None,
                value: None,
            },
        })
    }

    /// A literal's name: new (`index` 0, the string follows) or that of the entry at `index`.
    fn name(&self, index: usize, input: &mut Input<'_>) -> Result<Option<Vec<u8>>, Error> {
        if index == 0 {
            return input.string().map(Some);
        }
        Ok(self.field(index)?.name)
    }

    fn insert(&mut self, name: Option<Vec<u8>>, value: Vec<u8>) {
        let entry = Entry {
            name: name.map(Vec::into_boxed_slice),
            value: value.into_boxed_slice(),
        };
        let size = entry.size();
        // Where the table's size is not known, keep whatever the encoder may still refer to.
        let max = self
            .max
            .unwrap_or(self.limit.max(DEFAULT_TABLE))
            .min(MAX_TABLE);
        if size > max {
            // RFC 7541 4.4: an entry larger than the table empties it (with an unknown name
            // its real size is larger still).
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.entries.push_front(entry);
        self.size += size;
        self.evict(max);
    }

    /// Drop the oldest entries until the table fits `max`.
    fn evict(&mut self, max: usize) {
        while self.size > max {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size(),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }
}

/// A header block being read.
struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn peek(&self) -> Option<u8> {
        self.data.get(self.at).copied()
    }

    fn byte(&mut self) -> Result<u8, Error> {
        let b = self.peek().ok_or(Error::Truncated)?;
        self.at += 1;
        Ok(b)
    }

    /// An integer with an `n`-bit prefix (RFC 7541 5.1), at most 2^28: no index or length
    /// in a header block comes near.
    fn integer(&mut self, n: u32) -> Result<usize, Error> {
        let mask = (1u8 << n) - 1;
        let mut value = usize::from(self.byte()? & mask);
        if value < usize::from(mask) {
            return Ok(value);
        }
        for shift in [0u32, 7, 14, 21] {
            let b = self.byte()?;
            value += usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Error::Integer)
    }

    /// A string literal (RFC 7541 5.2), Huffman-decoded when marked so.
    fn string(&mut self) -> Result<Vec<u8>, Error> {
        let huffman = self.peek().ok_or(Error::Truncated)? & 0x80 != 0;
        let len = self.integer(7)?;
        let end = self.at.checked_add(len).ok_or(Error::Truncated)?;
        let raw = self.data.get(self.at..end).ok_or(Error::Truncated)?;
        self.at = end;
        if huffman {
            // Table-driven, four bits a step; it refuses EOS.
            let mut out = Vec::with_capacity(raw.len() * 8 / 5 + 1);
            httlib_huffman::decode(raw, &mut out, httlib_huffman::DecoderSpeed::FourBits)
                .map_err(|_| Error::Huffman)?;
            // It also takes padding made of zero bits: RFC 7541 5.2 wants at most 7 bits, all
            // ones (a prefix of EOS). The codes' lengths say how many bits are padding.
            let table = &httlib_huffman::encoder::table::ENCODE_TABLE;
            let bits: usize = out.iter().map(|&b| usize::from(table[b as usize].0)).sum();
            let padding = (raw.len() * 8).checked_sub(bits).ok_or(Error::Huffman)?;
            let ones = (1u8 << padding.min(7)) - 1;
            if padding > 7 || raw.last().is_some_and(|&last| last & ones != ones) {
                return Err(Error::Huffman);
            }
            Ok(out)
        } else {
            Ok(raw.to_vec())
        }
    }
}

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn known(name: &str, value: &str) -> Field {
        Field {
            name: Some(name.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
        }
    }

    fn encode(encoder: &mut loona_hpack::Encoder<'_>, fields: &[(&str, &str)]) -> Vec<u8> {
        encoder.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    /// RFC 7541 C.4: requests with Huffman coding, the table built across three blocks.
    #[test]
    fn the_rfc_examples_with_huffman_coding() {
        let hex = |s: &str| -> Vec<u8> {
            let s: String = s.split_whitespace().collect();
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let mut d = Decoder::new(true);
        let first = d
            .decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))
            .unwrap();
        assert_eq!(
            first.fields,
            vec![
                known(":method", "GET"),
                known(":scheme", "http"),
                known(":path", "/"),
                known(":authority", "www.example.com"),
            ]
        );
        let second = d.decode(&hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(
            second.fields,
            vec![
                known(":method", "GET"),
                known(":scheme", "http"),
                known(":path", "/"),
                known(":authority", "www.example.com"),
                known("cache-control", "no-cache"),
            ]
        );
        let third = d
            .decode(&hex(
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ))
            .unwrap();
        assert_eq!(
            third.fields,
            vec![
                known(":method", "GET"),
                known(":scheme", "https"),
                known(":path", "/index.html"),
                known(":authority", "www.example.com"),
                known("custom-key", "custom-value"),
            ]
        );
        assert_eq!(d.size, 164, "the table's size after C.4.3");
    }

    /// What another implementation encodes, this decodes to the same fields, block after
    /// block (the dynamic table in step), also across evictions.
    #[test]
    fn agrees_with_another_implementation_on_valid_blocks() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut reference = loona_hpack::Decoder::new();
        let mut ours = Decoder::new(true);
        for i in 0..300 {
            let path = format!("/items/{}", i % 37);
            let big = "v".repeat(i % 5 * 300);
            let fields = [
                (":method", if i % 3 == 0 { "POST" } else { "GET" }),
                (":scheme", "https"),
                (":path", path.as_str()),
                (":authority", "svc.internal:8443"),
                ("content-type", "application/grpc"),
                ("x-big", big.as_str()),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ];
            let block = encode(&mut encoder, &fields);
            let want: Vec<Field> = reference
                .decode(&block)
                .unwrap()
                .into_iter()
                .map(|(n, v)| Field {
                    name: Some(n),
                    value: Some(v),
                })
                .collect();
            assert_eq!(ours.decode(&block).unwrap().fields, want, "block {i}");
        }
    }

    /// A literal with incremental indexing and a new name (short, not Huffman-coded).
    fn indexed_literal(name: &str, value: &str) -> Vec<u8> {
        let mut b = vec![0x40, name.len() as u8];
        b.extend(name.as_bytes());
        b.push(value.len() as u8);
        b.extend(value.as_bytes());
        b
    }

    /// Joining late: the static table and literals decode, entries inserted since decode at
    /// their exact indices, and what was inserted before is unknown, never another entry.
    #[test]
    fn a_late_decoder_decodes_what_it_can_and_never_guesses() {
        let mut before = Decoder::new(true);
        let early = [indexed_literal("x-a", "1"), indexed_literal("x-b", "2")].concat();
        before.decode(&early).unwrap();
        // The late decoder starts here: x-b (62) and x-a (63) are in the table already.
        let mut late = Decoder::new(false);
        let block = [
            vec![0x80 | 62, 0x80 | 63],
            indexed_literal("x-c", "3"),
            vec![0x80 | 2],
        ]
        .concat();
        let unknown = Field {
            name: None,
            value: None,
        };
        let want = vec![
            known("x-b", "2"),
            known("x-a", "1"),
            known("x-c", "3"),
            known(":method", "GET"),
        ];
        assert_eq!(before.decode(&block).unwrap().fields, want);
        assert_eq!(
            late.decode(&block).unwrap().fields,
            vec![
                unknown.clone(),
                unknown.clone(),
                known("x-c", "3"),
                known(":method", "GET")
            ]
        );
        // Now x-c is 62, x-b 63, x-a 64. A literal named after x-a (unknown here) is
        // inserted with its value known and its name not.
        let next = [
            vec![0x80 | 62, 0x80 | 63, 0x7f, 0x01, 0x01, b'9'],
            vec![0x80 | 62],
        ]
        .concat();
        assert_eq!(
            before.decode(&next).unwrap().fields,
            vec![
                known("x-c", "3"),
                known("x-b", "2"),
                known("x-a", "9"),
                known("x-a", "9")
            ]
        );
        let partial = Field {
            name: None,
            value: Some(b"9".to_vec()),
        };
        assert_eq!(
            late.decode(&next).unwrap().fields,
            vec![known("x-c", "3"), unknown, partial.clone(), partial]
        );
        assert!(late.is_partial());
    }

    /// A block that was not seen: the decoder is told, and from then on decodes entries
    /// inserted later and reports older ones as unknown.
    #[test]
    fn after_losing_track_older_entries_are_unknown() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut d = Decoder::new(true);
        d.decode(&encode(&mut encoder, &[("x-a", "1")])).unwrap();
        let _missed = encode(&mut encoder, &[("x-b", "2")]);
        d.lost_track();
        let got = d
            .decode(&encode(
                &mut encoder,
                &[("x-c", "3"), ("x-b", "2"), ("x-a", "1")],
            ))
            .unwrap()
            .fields;
        let unknown = Field {
            name: None,
            value: None,
        };
        assert_eq!(got, vec![known("x-c", "3"), unknown.clone(), unknown]);
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let mut d = Decoder::new(true);
        // Index 0; an integer past its bytes; a string past the block; a size update above
        // the limit; an integer too long; an invalid Huffman string (EOS).
        assert_eq!(d.decode(&[0x80]), Err(Error::ZeroIndex));
        assert_eq!(d.decode(&[0xff]), Err(Error::Truncated));
        assert_eq!(d.decode(&[0x40, 0x05, b'a']), Err(Error::Truncated));
        assert_eq!(d.decode(&[0x3f, 0xe1, 0x7f]), Err(Error::TableSize));
        assert_eq!(
            d.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(Error::Integer)
        );
        assert_eq!(
            d.decode(&[0x40, 0x01, b'a', 0x84, 0xff, 0xff, 0xff, 0xff]),
            Err(Error::Huffman)
        );
        // The inputs of the advisories against other decoders.
        assert!(d.decode(&[0x3f]).is_err());
        assert!(d.is_partial(), "an error loses track");
    }

    /// A reproducible stream of pseudo-random numbers (xorshift64).
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// Any bytes: an answer, never a panic; the table stays within its bound.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        let mut d = Decoder::new(false);
        d.set_limit(u32::MAX);
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let block: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = d.decode(&block);
            assert!(d.size <= MAX_TABLE);
        }
    }

    /// The Huffman decoder agrees with `loona-hpack`'s on every input: what it decodes and
    /// what it refuses (EOS, padding longer than 7 bits or not all ones).
    #[test]
    fn huffman_strings_decode_as_the_reference_decodes_them() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        let mut refused = 0;
        for i in 0..20_000 {
            let len = (next() % 24) as usize;
            // Mostly bytes of short codes, so that most inputs are valid; some all ones.
            let raw: Vec<u8> = (0..len)
                .map(|_| match i % 3 {
                    0 => next() as u8,
                    1 => (next() as u8) & 0x7f,
                    _ => 0xff,
                })
                .collect();
            // A string literal: the Huffman bit and a 7-bit length, then the code.
            let mut literal = vec![0x80 | len as u8];
            literal.extend_from_slice(&raw);
            let got = Input {
                data: &literal,
                at: 0,
            }
            .string();
            let want = loona_hpack::huffman::HuffmanDecoder::new().decode(&raw);
            match (&got, &want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{raw:02x?}"),
                (Err(_), Err(_)) => refused += 1,
                _ => panic!("{raw:02x?}: ours {got:?}, reference {want:?}"),
            }
        }
        assert!(refused > 500, "invalid inputs were tried: {refused}");
    }
}
