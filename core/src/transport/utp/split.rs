//! A streaming JSON splitter: the uTP stream has no framing (the legacy peer writes one JSON text
//! per write and parses each received chunk as one message), so the reader finds where each
//! top-level JSON array or object ends, whatever way the bytes were split or coalesced.

use crate::error::{Error, ErrorKind, Result};

/// Splits a byte stream into whole top-level JSON arrays/objects.
///
/// Feed bytes with [`JsonSplitter::push`], then take messages with [`JsonSplitter::next_message`]
/// until it gives `None`. Whitespace between messages is skipped. Anything else between messages
/// (a top-level scalar, garbage) is a [`ErrorKind::Decode`] error: the stream cannot be resynced,
/// its connection should close. A message longer than the limit is an
/// [`ErrorKind::PayloadTooLarge`] error before it is buffered whole.
#[derive(Debug)]
pub struct JsonSplitter {
    buf: Vec<u8>,
    /// Start of the message being scanned in `buf` (bytes before it are consumed).
    start: usize,
    /// How far `buf` has been scanned.
    pos: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    max_message: usize,
}

impl JsonSplitter {
    /// A splitter refusing messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> JsonSplitter {
        JsonSplitter { buf: Vec::new(), start: 0, pos: 0, depth: 0, in_string: false, escaped: false, max_message }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.pos -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// How many bytes are buffered and not yet taken as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// True when no partial message is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf[self.start..].iter().all(|b| b.is_ascii_whitespace())
    }

    /// The next whole message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<&[u8]>> {
        while self.pos < self.buf.len() {
            let b = self.buf[self.pos];
            self.pos += 1;
            if self.depth == 0 {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => self.start = self.pos,
                    b'[' | b'{' => {
                        self.start = self.pos - 1;
                        self.depth = 1;
                    }
                    other => {
                        return Err(Error::new(
                            ErrorKind::Decode,
                            format!("uTP stream: byte 0x{other:02x} where a JSON array or object should start"),
                        ));
                    }
                }
                continue;
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'[' | b'{' => self.depth += 1,
                b']' | b'}' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let (s, e) = (self.start, self.pos);
                        self.start = self.pos;
                        if e - s > self.max_message {
                            return Err(self.too_large());
                        }
                        return Ok(Some(&self.buf[s..e]));
                    }
                }
                _ => {}
            }
        }
        if self.depth > 0 && self.pos - self.start > self.max_message {
            return Err(self.too_large());
        }
        Ok(None)
    }

    fn too_large(&self) -> Error {
        Error::new(ErrorKind::PayloadTooLarge, format!("uTP stream: a message longer than {} bytes", self.max_message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(s: &mut JsonSplitter) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(m) = s.next_message().expect("valid") {
            out.push(String::from_utf8(m.to_vec()).expect("utf8"));
        }
        out
    }

    #[test]
    fn coalesced_messages_come_out_one_by_one() {
        let mut s = JsonSplitter::new(1 << 20);
        s.push(br#"["a","k",{"x":"]}[\"\\"}] ["b",null,1]"#);
        assert_eq!(all(&mut s), vec![r#"["a","k",{"x":"]}[\"\\"}]"#, r#"["b",null,1]"#]);
        assert!(s.is_empty());
    }

    #[test]
    fn a_message_split_byte_by_byte_is_whole() {
        let msg = r#"["r\"1","key",{"a":[1,2,{"b":"}"}],"é":"\\"}]"#;
        let mut s = JsonSplitter::new(1 << 20);
        let mut got = Vec::new();
        for b in msg.as_bytes() {
            s.push(std::slice::from_ref(b));
            got.extend(all(&mut s));
        }
        assert_eq!(got, vec![msg.to_string()]);
    }

    #[test]
    fn garbage_and_oversize_are_errors() {
        let mut s = JsonSplitter::new(1 << 20);
        s.push(b"  42");
        assert_eq!(s.next_message().expect_err("scalar").kind(), ErrorKind::Decode);
        let mut s = JsonSplitter::new(10);
        s.push(b"[\"0123456789012\"");
        assert_eq!(s.next_message().expect_err("big").kind(), ErrorKind::PayloadTooLarge);
        // A message of exactly the limit passes.
        let mut s = JsonSplitter::new(10);
        s.push(b"[\"123456\"]");
        assert_eq!(all(&mut s).len(), 1);
    }

    #[test]
    fn the_buffer_is_compacted() {
        let mut s = JsonSplitter::new(1 << 20);
        for _ in 0..10_000 {
            s.push(b"[1,2,3]");
            assert_eq!(all(&mut s).len(), 1);
        }
        assert!(s.buf.len() < 1024);
    }
}
#[cfg(test)]
mod across_pushes {
    use super::*;

    #[test]
    fn split_inside_a_string_across_pushes() {
        let mut s = JsonSplitter::new(1 << 20);
        let mut got = Vec::new();
        for c in [&br#"["r1","k""#[..], br#","hel"#, br#"lo"]"#] {
            s.push(c);
            while let Some(m) = s.next_message().expect("ok") {
                got.push(String::from_utf8(m.to_vec()).expect("utf8"));
            }
        }
        assert_eq!(got, vec![r#"["r1","k","hello"]"#.to_string()]);
    }
}
