//! A bounded line reader over any [`AsyncRead`]: an agent's stdout or stderr.
//!
//! Hostile output must never balloon the worker, so the reader holds at most
//! one fixed read buffer plus one line of at most `max_line` bytes:
//!
//! - lines split on LF only (`\r` stays part of the line; parsers trim it);
//! - a line longer than `max_line` keeps its first `max_line` bytes, the rest
//!   is read and thrown away as it arrives, and [`Line::len`] reports the
//!   true size (the caller appends a marker, see [`Line::into_text`]);
//! - bytes that are not UTF-8 are replaced with U+FFFD;
//! - a last line without LF is delivered at EOF.
//!
//! [`LineReader::next_line`] is cancel-safe: state lives in the reader, and
//! the only await is a `read` into a buffer that holds no unconsumed bytes.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest line kept whole by default (256 KiB).
pub const DEFAULT_MAX_LINE: usize = 256 * 1024;

const READ_BUF: usize = 64 * 1024;

/// One line of agent output, without its LF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The kept bytes, UTF-8 (lossy), at most the reader's limit.
    pub text: String,
    /// True length in bytes of the line as the agent wrote it.
    pub len: usize,
    /// Whether bytes beyond the limit were thrown away.
    pub cut: bool,
}

impl Line {
    /// The text, with a `…[cut: N bytes]` marker when the line was cut.
    pub fn into_text(self) -> String {
        if self.cut {
            format!("{}…[cut: {} bytes]", self.text, self.len)
        } else {
            self.text
        }
    }
}

/// Reads [`Line`]s from `R` with bounded memory.
pub struct LineReader<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    line: Vec<u8>,
    line_len: usize,
    max_line: usize,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R) -> Self {
        LineReader::with_limit(inner, DEFAULT_MAX_LINE)
    }

    /// A reader that keeps at most `max_line` bytes of each line (at least 1).
    pub fn with_limit(inner: R, max_line: usize) -> Self {
        LineReader {
            inner,
            buf: vec![0; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            line: Vec::new(),
            line_len: 0,
            max_line: max_line.max(1),
            eof: false,
        }
    }

    /// The next line, or `None` at EOF. Read errors end the stream with the
    /// error; whatever partial line was held is delivered first.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            if self.start < self.end {
                let avail = &self.buf[self.start..self.end];
                match memchr::memchr(b'\n', avail) {
                    Some(i) => {
                        self.take(i);
                        self.start += i + 1;
                        return Ok(Some(self.finish_line()));
                    }
                    None => {
                        let n = avail.len();
                        self.take(n);
                        self.start = self.end;
                    }
                }
            }
            if self.eof {
                if self.line_len > 0 {
                    return Ok(Some(self.finish_line()));
                }
                return Ok(None);
            }
            let n = self.inner.read(&mut self.buf).await?;
            self.start = 0;
            self.end = n;
            if n == 0 {
                self.eof = true;
            }
        }
    }

    /// Appends `buf[start..start+n]` to the current line, within the limit.
    fn take(&mut self, n: usize) {
        let room = self.max_line.saturating_sub(self.line.len());
        let keep = n.min(room);
        self.line
            .extend_from_slice(&self.buf[self.start..self.start + keep]);
        self.line_len += n;
    }

    fn finish_line(&mut self) -> Line {
        let len = self.line_len;
        let cut = len > self.line.len();
        let text = match std::str::from_utf8(&self.line) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(&self.line).into_owned(),
        };
        self.line.clear();
        if self.line.capacity() > 4 * READ_BUF {
            // Give back the memory of a huge line.
            self.line.shrink_to(READ_BUF);
        }
        self.line_len = 0;
        Line { text, len, cut }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], limit: usize) -> Vec<Line> {
        let mut r = LineReader::with_limit(input, limit);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().await.unwrap() {
            out.push(l);
        }
        out
    }

    #[tokio::test]
    async fn splits_on_lf_only() {
        let got = lines("a\nb\u{2028}c\r\n\nd".as_bytes(), 100).await;
        let texts: Vec<_> = got.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["a", "b\u{2028}c\r", "", "d"]);
    }

    #[tokio::test]
    async fn partial_last_line_is_delivered_at_eof() {
        let got = lines(b"one\ntwo", 100).await;
        assert_eq!(got[1].text, "two");
        assert_eq!(got[1].len, 3);
        assert!(!got[1].cut);
    }

    #[tokio::test]
    async fn huge_line_is_cut_with_its_true_size() {
        let mut input = vec![b'x'; 3 * 1024 * 1024];
        input.extend_from_slice(b"\nafter\n");
        let got = lines(&input, 1024).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].text.len(), 1024);
        assert_eq!(got[0].len, 3 * 1024 * 1024);
        assert!(got[0].cut);
        assert!(got[0]
            .clone()
            .into_text()
            .ends_with("…[cut: 3145728 bytes]"));
        assert_eq!(got[1].text, "after");
    }

    #[tokio::test]
    async fn huge_line_does_not_grow_the_buffer() {
        let input = vec![b'y'; 2 * 1024 * 1024];
        let mut r = LineReader::with_limit(&input[..], 4096);
        let l = r.next_line().await.unwrap().unwrap();
        assert!(r.line.capacity() <= 4 * READ_BUF);
        assert_eq!(l.len, 2 * 1024 * 1024);
    }

    #[tokio::test]
    async fn non_utf8_is_replaced() {
        let got = lines(b"ok \xff\xfe end\n", 100).await;
        assert_eq!(got[0].text, "ok \u{fffd}\u{fffd} end");
        assert_eq!(got[0].len, 9);
    }

    #[tokio::test]
    async fn empty_input_has_no_lines() {
        assert!(lines(b"", 10).await.is_empty());
    }

    #[tokio::test]
    async fn lines_split_across_reads() {
        let (mut w, r) = tokio::io::duplex(8);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in [&b"hel"[..], b"lo\nwor", b"ld\n"] {
                w.write_all(chunk).await.unwrap();
            }
        });
        let mut r = LineReader::with_limit(r, 100);
        assert_eq!(r.next_line().await.unwrap().unwrap().text, "hello");
        assert_eq!(r.next_line().await.unwrap().unwrap().text, "world");
        writer.await.unwrap();
        assert_eq!(r.next_line().await.unwrap(), None);
    }
}
