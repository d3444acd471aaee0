//! THE SEAM where an agent's output is read. Today it reads stdout and stderr
//! line by line (bounded: a line longer than [`MAX_LINE_BYTES`] is cut and
//! the rest skipped), stamps the last-output instant the idle limit watches,
//! and discards the content; success is judged by exit status alone.
//!
//! Glasspane will replace [`drain`]: it parses the agent's JSONL from the
//! same [`LineReader`], publishes session events, and returns its verdict in
//! [`OutputSummary::verdict`] (pi exits 0 even on failure). The signature is
//! the contract: the supervisor only needs the activity stamps and the summary.

use std::time::Instant;

use broker::messages::{Outcome, Usage};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::watch;

/// Longest line kept; longer lines are cut here and counted.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// What reading the output found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputSummary {
    pub stdout_lines: u64,
    pub stderr_lines: u64,
    pub bytes: u64,
    /// Lines longer than [`MAX_LINE_BYTES`], cut.
    pub cut_lines: u64,
    /// The agent's own end signal, when a parser understood it (none yet).
    pub verdict: Option<Outcome>,
    pub usage: Option<Usage>,
}

/// One line, without its LF; `cut` when it was longer than the bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub bytes: Vec<u8>,
    pub cut: bool,
}

/// Reads LF-separated lines of at most `max` bytes; never buffers more.
pub struct LineReader<R> {
    inner: BufReader<R>,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner: BufReader::new(inner),
            max,
        }
    }

    /// The next line (a partial last line at EOF included), `None` at EOF.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        let mut line = Vec::new();
        let mut cut = false;
        let mut any = false;
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                return Ok(any.then_some(Line { bytes: line, cut }));
            }
            any = true;
            let (chunk, used, done) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (&buf[..i], i + 1, true),
                None => (buf, buf.len(), false),
            };
            let room = self.max.saturating_sub(line.len());
            if chunk.len() > room {
                cut = true;
            }
            line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            self.inner.consume(used);
            if done {
                return Ok(Some(Line { bytes: line, cut }));
            }
        }
    }
}

/// Reads both streams to EOF, stamping `activity` at every line. Read errors
/// end that stream (the agent's exit status still decides).
pub async fn drain<O, E>(
    stdout: Option<O>,
    stderr: Option<E>,
    activity: watch::Sender<Instant>,
) -> OutputSummary
where
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
{
    let out = async {
        match stdout {
            Some(s) => count(LineReader::new(s, MAX_LINE_BYTES), &activity).await,
            None => (0, 0, 0),
        }
    };
    let err = async {
        match stderr {
            Some(s) => count(LineReader::new(s, MAX_LINE_BYTES), &activity).await,
            None => (0, 0, 0),
        }
    };
    let ((ol, ob, oc), (el, eb, ec)) = tokio::join!(out, err);
    OutputSummary {
        stdout_lines: ol,
        stderr_lines: el,
        bytes: ob + eb,
        cut_lines: oc + ec,
        verdict: None,
        usage: None,
    }
}

async fn count<R: AsyncRead + Unpin>(
    mut reader: LineReader<R>,
    activity: &watch::Sender<Instant>,
) -> (u64, u64, u64) {
    let (mut lines, mut bytes, mut cut) = (0u64, 0u64, 0u64);
    while let Ok(Some(line)) = reader.next_line().await {
        lines += 1;
        bytes += line.bytes.len() as u64;
        cut += u64::from(line.cut);
        activity.send_replace(Instant::now());
    }
    (lines, bytes, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_partial_last_line_kept() {
        let data: &[u8] = b"short\nxxxxxxxxxx\n\xff\xfe\nend";
        let mut r = LineReader::new(data, 4);
        let mut got = Vec::new();
        while let Some(l) = r.next_line().await.unwrap() {
            got.push((l.bytes, l.cut));
        }
        assert_eq!(
            got,
            vec![
                (b"shor".to_vec(), true),
                (b"xxxx".to_vec(), true),
                (vec![0xff, 0xfe], false),
                (b"end".to_vec(), false)
            ]
        );
    }

    #[tokio::test]
    async fn drain_counts_and_stamps_activity() {
        let start = Instant::now();
        let (tx, rx) = watch::channel(start);
        let s = drain(Some(&b"a\nb\n"[..]), Some(&b"e\n"[..]), tx).await;
        assert_eq!((s.stdout_lines, s.stderr_lines, s.bytes), (2, 1, 3));
        assert!(*rx.borrow() >= start);
    }
}
