//! Incremental Server-Sent-Events parser (WHATWG HTML §9.2): chunk boundaries may fall
//! anywhere, including between the CR and LF of a CRLF; lines end in LF, CRLF or CR;
//! `data:` lines of one event are joined with LF; comment lines start with `:`.

/// One dispatched event. `event` is empty when the stream gave no `event:` field.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    pub event: &'a [u8],
    pub data: &'a [u8],
    /// Offset in the whole stream just past the blank line that ended the event: the
    /// event's raw bytes end here (and start where the previous event ended).
    pub end: u64,
}

/// Longest event (data plus the current line) kept; a larger one is dropped, not buffered
/// without bound. Provider events are a few KB.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    event: Vec<u8>,
    has_data: bool,
    /// The last chunk ended in CR: a LF at the start of the next one belongs to it.
    pending_cr: bool,
    started: bool,
    /// The current event grew past the limit; it is skipped up to the next blank line.
    oversized: bool,
    /// Events dropped because they were too large.
    pub dropped_events: u64,
    /// Bytes fed so far.
    offset: u64,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk; calls `on_event` for every event it completes.
    pub fn feed(&mut self, chunk: &[u8], on_event: &mut dyn FnMut(SseEvent<'_>)) {
        let base = self.offset;
        self.offset += chunk.len() as u64;
        let end_of_chunk = base + chunk.len() as u64;
        let mut rest = chunk;
        if !self.started && !rest.is_empty() {
            self.started = true;
            rest = rest.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(rest);
        }
        if self.pending_cr && !rest.is_empty() {
            self.pending_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(pos) = memchr::memchr2(b'\n', b'\r', rest) {
            let terminator = rest[pos];
            let crlf = terminator == b'\r' && rest.get(pos + 1) == Some(&b'\n');
            let after = pos + 1 + usize::from(crlf);
            // Where this line's terminator ends, in the whole stream.
            let end = end_of_chunk - (rest.len() - after) as u64;
            if self.line.is_empty() {
                self.process_line(&rest[..pos], end, on_event);
            } else {
                let mut line = std::mem::take(&mut self.line);
                self.append_line(&mut line, &rest[..pos]);
                self.process_line(&line, end, on_event);
                line.clear();
                self.line = line;
            }
            rest = &rest[after..];
            if terminator == b'\r' && !crlf && rest.is_empty() {
                self.pending_cr = true;
            }
        }
        if !rest.is_empty() {
            let mut line = std::mem::take(&mut self.line);
            self.append_line(&mut line, rest);
            self.line = line;
        }
    }

    fn append_line(&mut self, line: &mut Vec<u8>, part: &[u8]) {
        if self.oversized || line.len() + part.len() + self.data.len() > MAX_EVENT_BYTES {
            self.oversized = true;
            line.clear();
            return;
        }
        line.extend_from_slice(part);
    }

    fn process_line(&mut self, line: &[u8], end: u64, on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if line.is_empty() {
            self.dispatch(end, on_event);
            return;
        }
        if self.oversized || line[0] == b':' {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT_BYTES {
                    self.oversized = true;
                    return;
                }
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            _ => {} // id, retry and unknown fields do not matter for accounting
        }
    }

    fn dispatch(&mut self, end: u64, on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if self.oversized {
            self.dropped_events += 1;
        } else if self.has_data {
            let data = self.data.strip_suffix(b"\n").unwrap_or(&self.data);
            on_event(SseEvent {
                event: &self.event,
                data,
                end,
            });
        }
        self.oversized = false;
        self.has_data = false;
        self.data.clear();
        self.event.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collect(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut |e| {
                out.push((
                    String::from_utf8_lossy(e.event).into_owned(),
                    String::from_utf8_lossy(e.data).into_owned(),
                ))
            });
        }
        out
    }

    #[test]
    fn basic_events() {
        let out = collect(&[b"data: a\n\nevent: x\ndata: b\n\n"]);
        assert_eq!(out, vec![("".into(), "a".into()), ("x".into(), "b".into())]);
    }

    #[test]
    fn line_endings_and_multiline_data() {
        let out = collect(&[b"data: 1\r\ndata:2\r\rdata: 3\r\n\r\n: comment\n\n"]);
        assert_eq!(
            out,
            vec![("".into(), "1\n2".into()), ("".into(), "3".into())]
        );
    }

    #[test]
    fn crlf_split_across_chunks() {
        let out = collect(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(out, vec![("".into(), "a".into()), ("".into(), "b".into())]);
    }

    #[test]
    fn incomplete_event_at_end_is_not_dispatched() {
        assert!(collect(&[b"data: a\n"]).is_empty());
    }

    #[test]
    fn field_without_colon_and_bom() {
        let out = collect(&[b"\xEF\xBB\xBFdata\n\n"]);
        assert_eq!(out, vec![("".into(), "".into())]);
    }

    #[test]
    fn event_ends_are_stream_offsets() {
        let stream = b"data: a\n\ndata: b\r\n\r\n: c\n\ndata: d\r\r";
        let ends = |size: usize| {
            let mut ends = Vec::new();
            let mut p = SseParser::new();
            for chunk in stream.chunks(size) {
                p.feed(chunk, &mut |e| ends.push(e.end));
            }
            ends
        };
        let whole = ends(stream.len());
        assert_eq!(whole, vec![9, 20, 34]);
        assert_eq!(&stream[9..20], b"data: b\r\n\r\n");
        // A CRLF split between chunks: the event is dispatched at the CR, and the LF counts
        // as the start of the next event. Dropping either event still leaves valid SSE.
        for size in 1..stream.len() {
            let split = ends(size);
            assert_eq!(split.len(), whole.len());
            assert!(
                split.iter().zip(&whole).all(|(a, b)| b - a <= 1),
                "{size}: {split:?}"
            );
        }
    }

    #[test]
    fn oversized_event_is_dropped() {
        let mut p = SseParser::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 10];
        let mut n = 0;
        p.feed(b"data: ", &mut |_| n += 1);
        p.feed(&big, &mut |_| n += 1);
        p.feed(b"\n\ndata: ok\n\n", &mut |_| n += 1);
        assert_eq!(n, 1);
        assert_eq!(p.dropped_events, 1);
    }

    const STREAM: &[u8] = b"event: message_start\r\ndata: {\"a\":1}\r\n\r\n: ping\n\ndata: line1\ndata: line2\n\nevent: x\rdata: y\r\rdata: [DONE]\n\n";

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(cuts in proptest::collection::vec(0usize..STREAM.len(), 0..12)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for c in cuts { chunks.push(&STREAM[at..c]); at = c; }
            chunks.push(&STREAM[at..]);
            prop_assert_eq!(collect(&chunks), collect(&[STREAM]));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), split in 0usize..512) {
            let split = split.min(bytes.len());
            let _ = collect(&[&bytes[..split], &bytes[split..]]);
        }
    }
}
