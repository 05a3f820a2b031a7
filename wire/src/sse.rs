//! Incremental Server-Sent Events codec (the WHATWG event-stream format).
//!
//! [`SseParser`] takes bytes in whatever pieces TCP delivers them and yields complete events.
//! Lines end in `\n`, `\r\n` or `\r`; `:` lines are comments; `event`, `data`, `id` and `retry`
//! are the fields; a blank line dispatches. Splitting happens on ASCII line breaks before any
//! UTF-8 decoding, so a multi-byte character cut across two reads is never mangled.
//! Each event keeps the raw bytes it was parsed from, so a proxy can forward it unchanged.

use bytes::{Bytes, BytesMut};

/// The `data:` payload that ends an OpenAI-style stream.
pub const DONE: &str = "[DONE]";

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, when the block had one.
    pub event: Option<String>,
    /// All `data:` lines of the block joined with `\n`.
    pub data: String,
    /// The `id:` field, when present.
    pub id: Option<String>,
    /// The `retry:` field in milliseconds, when present and numeric.
    pub retry_ms: Option<u64>,
    /// The exact bytes of the block, terminating blank line included.
    pub raw: Bytes,
    /// True when the block had at least one `data` line. Blocks of only comments or only
    /// `id`/`retry` fields are reported with `has_data == false` so callers can ignore them.
    pub has_data: bool,
}

impl SseEvent {
    /// True for the `data: [DONE]` sentinel.
    pub fn is_done(&self) -> bool {
        self.has_data && self.data.trim() == DONE
    }
}

/// Incremental parser; feed bytes with [`SseParser::push`].
#[derive(Debug, Default)]
pub struct SseParser {
    buf: BytesMut,
    /// Offset in `buf` where the current (unfinished) block starts.
    block_start: usize,
    /// Offset in `buf` up to which lines have been scanned.
    scanned: usize,
    pending: PendingBlock,
    /// A `\r` ended the previous chunk: a `\n` at the start of the next one belongs to it.
    after_cr: bool,
}

#[derive(Debug, Default)]
struct PendingBlock {
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    retry_ms: Option<u64>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `chunk` and returns every event it completes, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut chunk = chunk;
        if self.after_cr {
            self.after_cr = false;
            if chunk.first() == Some(&b'\n') {
                // The second half of a `\r\n` split across reads: part of the previous line.
                self.buf.extend_from_slice(b"\n");
                self.scanned += 1;
                chunk = &chunk[1..];
            }
        }
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            let rest = &self.buf[self.scanned..];
            let Some(pos) = memchr::memchr2(b'\n', b'\r', rest) else {
                break;
            };
            let line_start = self.scanned;
            let line_end = self.scanned + pos;
            let mut next = line_end + 1;
            if self.buf[line_end] == b'\r' {
                match self.buf.get(line_end + 1) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.scanned = next;
            if line_end == line_start {
                if let Some(ev) = self.dispatch() {
                    out.push(ev);
                }
            } else {
                field(&mut self.pending, &self.buf[line_start..line_end]);
            }
        }
        // Compact: drop bytes of dispatched blocks so the buffer does not grow without bound.
        if self.block_start > 0 {
            let _ = self.buf.split_to(self.block_start);
            self.scanned -= self.block_start;
            self.block_start = 0;
        }
        out
    }

    /// Bytes received but not yet part of a dispatched event (an unfinished block).
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        // The block's bytes leave the buffer without a copy (the parser keeps only what
        // follows them).
        let raw = self
            .buf
            .split_to(self.scanned)
            .freeze()
            .slice(self.block_start..);
        self.scanned = 0;
        self.block_start = 0;
        let block = std::mem::take(&mut self.pending);
        if block.data.is_none()
            && block.event.is_none()
            && block.id.is_none()
            && block.retry_ms.is_none()
        {
            // A blank line with nothing before it (or only comments): nothing to dispatch,
            // but a proxy still forwards the bytes, so report comment-only blocks.
            if raw.iter().all(|b| *b == b'\n' || *b == b'\r') {
                return None;
            }
        }
        Some(SseEvent {
            event: block.event,
            has_data: block.data.is_some(),
            data: block.data.unwrap_or_default(),
            id: block.id,
            retry_ms: block.retry_ms,
            raw,
        })
    }
}

/// Applies one non-empty line of a block to the pending block.
fn field(pending: &mut PendingBlock, line: &[u8]) {
    if line.first() == Some(&b':') {
        return; // comment, e.g. `: keep-alive`
    }
    let (name, value) = match line.iter().position(|b| *b == b':') {
        Some(i) => {
            let v = &line[i + 1..];
            (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
        }
        None => (line, &b""[..]),
    };
    // Valid UTF-8 is the rule; checking it first is several times cheaper than the lossy
    // conversion's own scan.
    let value = match std::str::from_utf8(value) {
        Ok(v) => std::borrow::Cow::Borrowed(v),
        Err(_) => String::from_utf8_lossy(value),
    };
    match name {
        b"data" => match &mut pending.data {
            Some(d) => {
                d.push('\n');
                d.push_str(&value);
            }
            None => pending.data = Some(value.into_owned()),
        },
        b"event" => pending.event = Some(value.into_owned()),
        b"id" => pending.id = Some(value.into_owned()),
        b"retry" => pending.retry_ms = value.trim().parse().ok(),
        _ => {}
    }
}

/// Encodes one `data:` event carrying `payload` (which must not contain line breaks, as
/// serialised JSON never does).
pub fn data_event(payload: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 8);
    b.extend_from_slice(b"data: ");
    b.extend_from_slice(payload.as_bytes());
    b.extend_from_slice(b"\n\n");
    b.freeze()
}

/// The `data: [DONE]` event.
pub fn done_event() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(parts: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        parts.iter().flat_map(|c| p.push(c)).collect()
    }

    #[test]
    fn parses_events_split_at_every_byte() {
        let stream =
            "data: {\"a\":1}\n\n: keep-alive\n\nid: 7\nevent: ping\ndata: x\n\ndata: [DONE]\n\n";
        let whole = feed_all(&[stream.as_bytes()]);
        let bytes = stream.as_bytes();
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        let split = feed_all(&singles);
        assert_eq!(whole, split);
        let with_data: Vec<_> = whole.iter().filter(|e| e.has_data).collect();
        assert_eq!(with_data.len(), 3);
        assert_eq!(with_data[0].data, "{\"a\":1}");
        assert_eq!(with_data[1].event.as_deref(), Some("ping"));
        assert_eq!(with_data[1].id.as_deref(), Some("7"));
        assert!(with_data[2].is_done());
    }

    #[test]
    fn raw_bytes_reassemble_the_stream() {
        let stream = "data: a\r\n\r\n: c\n\ndata: b\rdata: c\r\r";
        let bytes = stream.as_bytes();
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        let events = feed_all(&singles);
        let joined: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
        assert_eq!(joined, bytes);
        assert_eq!(events.last().map(|e| e.data.as_str()), Some("b\nc"));
    }

    #[test]
    fn multibyte_characters_split_across_reads_survive() {
        let text = "data: {\"t\":\"😀中\"}\n\n";
        let b = text.as_bytes();
        // Cut inside the 4-byte emoji and inside the 3-byte CJK character.
        let cut1 = text.find('😀').map(|i| i + 2).unwrap_or(0);
        let cut2 = text.find('中').map(|i| i + 1).unwrap_or(0);
        let ev = feed_all(&[&b[..cut1], &b[cut1..cut2], &b[cut2..]]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "{\"t\":\"😀中\"}");
        assert!(!ev[0].data.contains('\u{FFFD}'));
    }

    #[test]
    fn unfinished_block_is_not_dispatched() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: partial\n").is_empty());
        assert!(p.pending_bytes() > 0);
        assert_eq!(p.push(b"\n").len(), 1);
    }

    #[test]
    fn encoders_round_trip() {
        let mut p = SseParser::new();
        let mut ev = p.push(&data_event("{\"x\":2}"));
        ev.extend(p.push(&done_event()));
        assert_eq!(ev[0].data, "{\"x\":2}");
        assert!(ev[1].is_done());
    }
}
