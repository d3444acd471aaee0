//! A string that must never be printed: agent environment values (API keys).
//! `Debug` and `Display` show `<redacted>`; only [`Secret::expose`] reads it,
//! and the only callers are the code that builds the agent's environment and
//! the [`Redactor`].
//!
//! An agent can still print its own key. So the worker passes every byte of
//! an agent's output through a [`Redactor`] holding the values of every
//! secret in its profiles before glasspane reads it: each value becomes
//! `[redacted:NAME]` in the session events, and so in the transcript, the
//! shared transcript, progress and finished reports built from them. Output
//! arrives in chunks, so [`StreamRedactor`] holds back a chunk's tail while
//! it could still be the start of a secret. Values shorter than
//! [`MIN_SECRET_LEN`] bytes are not redacted (they would blank out ordinary
//! text, and are no keys); a value the agent transforms (base64, reversed,
//! split by other text) is not recognised.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::Deserialize;
use tokio::io::{AsyncRead, ReadBuf};

#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself: only for the agent's environment.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Shortest value the [`Redactor`] replaces, in bytes.
pub const MIN_SECRET_LEN: usize = 4;

/// Replaces secret values with `[redacted:NAME]`. Pure: no I/O.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// (value, replacement), longest value first so that a secret holding
    /// another is replaced whole.
    secrets: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Redactor {
    /// A redactor of every `(name, secret)` whose value is at least
    /// [`MIN_SECRET_LEN`] bytes; a value listed under two names keeps the
    /// first name.
    pub fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a Secret)>) -> Redactor {
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (name, secret) in secrets {
            let value = secret.expose().as_bytes();
            if value.len() < MIN_SECRET_LEN || out.iter().any(|(v, _)| v == value) {
                continue;
            }
            out.push((value.to_vec(), format!("[redacted:{name}]").into_bytes()));
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        Redactor { secrets: out }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every secret replaced.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if !self
            .secrets
            .iter()
            .any(|(v, _)| contains(text.as_bytes(), v))
        {
            return Cow::Borrowed(text);
        }
        let mut stream = StreamRedactor::new(Arc::new(self.clone()));
        let mut out = stream.push(text.as_bytes());
        out.extend(stream.finish());
        // Replacements are ASCII and whole UTF-8 values are cut out whole.
        Cow::Owned(String::from_utf8_lossy(&out).into_owned())
    }

    /// The replacement of the secret that starts `input`, and its length.
    fn match_at(&self, input: &[u8]) -> Option<(usize, &[u8])> {
        self.secrets
            .iter()
            .find(|(v, _)| input.starts_with(v))
            .map(|(v, r)| (v.len(), r.as_slice()))
    }

    /// Whether `tail` (shorter than some secret) could still grow into one.
    fn could_start_one(&self, tail: &[u8]) -> bool {
        self.secrets
            .iter()
            .any(|(v, _)| tail.len() < v.len() && v.starts_with(tail))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A [`Redactor`] over a byte stream cut into arbitrary chunks: a secret
/// split across chunks is still replaced.
#[derive(Debug)]
pub struct StreamRedactor {
    redactor: Arc<Redactor>,
    /// The tail of the input so far that may be the start of a secret.
    held: Vec<u8>,
}

impl StreamRedactor {
    pub fn new(redactor: Arc<Redactor>) -> StreamRedactor {
        StreamRedactor {
            redactor,
            held: Vec::new(),
        }
    }

    /// Takes the next chunk; returns the output that is final now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut input = std::mem::take(&mut self.held);
        input.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(input.len());
        let mut i = 0;
        while i < input.len() {
            if let Some((len, replacement)) = self.redactor.match_at(&input[i..]) {
                out.extend_from_slice(replacement);
                i += len;
            } else if self.redactor.could_start_one(&input[i..]) {
                self.held = input[i..].to_vec();
                return out;
            } else {
                out.push(input[i]);
                i += 1;
            }
        }
        out
    }

    /// The end of the stream: what was held back was no secret.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// An [`AsyncRead`] that yields `inner`'s bytes with every secret replaced.
pub struct RedactingReader<R> {
    inner: R,
    redactor: StreamRedactor,
    /// Redacted bytes not yet read, from `ready_at`.
    ready: Vec<u8>,
    ready_at: usize,
    eof: bool,
}

impl<R> RedactingReader<R> {
    pub fn new(inner: R, redactor: Arc<Redactor>) -> RedactingReader<R> {
        RedactingReader {
            inner,
            redactor: StreamRedactor::new(redactor),
            ready: Vec::new(),
            ready_at: 0,
            eof: false,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for RedactingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_at < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_at);
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                this.ready_at += n;
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let filled = chunk_buf.filled();
                    this.ready = if filled.is_empty() {
                        this.eof = true;
                        this.redactor.finish()
                    } else {
                        this.redactor.push(filled)
                    };
                    this.ready_at = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn redactor() -> Redactor {
        let key = Secret::new("sk-ant-SECRET123");
        let token = Secret::new("ghp_tok");
        let short = Secret::new("abc");
        Redactor::new([
            ("ANTHROPIC_API_KEY", &key),
            ("GITHUB_TOKEN", &token),
            ("SHORT", &short),
        ])
    }

    #[test]
    fn every_secret_becomes_its_name() {
        let r = redactor();
        assert_eq!(
            r.redact("key=sk-ant-SECRET123 and ghp_tok, abc stays"),
            "key=[redacted:ANTHROPIC_API_KEY] and [redacted:GITHUB_TOKEN], abc stays"
        );
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
    }

    /// A secret split across chunk boundaries, at every split point and in
    /// one-byte chunks, is still replaced; nothing else is lost or held.
    #[test]
    fn a_secret_split_across_chunks_is_still_replaced() {
        let r = Arc::new(redactor());
        let input = b"{\"text\":\"my key is sk-ant-SECRET123\"}\nsk-ant- is a prefix\nsk";
        let expected =
            b"{\"text\":\"my key is [redacted:ANTHROPIC_API_KEY]\"}\nsk-ant- is a prefix\nsk";
        for cut in 0..=input.len() {
            let mut s = StreamRedactor::new(r.clone());
            let mut out = s.push(&input[..cut]);
            out.extend(s.push(&input[cut..]));
            out.extend(s.finish());
            assert_eq!(out, expected.to_vec(), "cut at {cut}");
        }
        let mut s = StreamRedactor::new(r);
        let mut out = Vec::new();
        for b in input {
            out.extend(s.push(&[*b]));
        }
        out.extend(s.finish());
        assert_eq!(out, expected.to_vec());
    }

    #[test]
    fn a_line_is_not_held_once_it_cannot_be_a_secret() {
        let mut s = StreamRedactor::new(Arc::new(redactor()));
        assert_eq!(s.push(b"hello\n"), b"hello\n");
        assert_eq!(s.push(b"x sk-a"), b"x ");
        assert_eq!(s.push(b"nt-other\n"), b"sk-ant-other\n");
    }

    #[tokio::test]
    async fn the_reader_redacts_what_it_reads() {
        let (mut tx, rx) = tokio::io::duplex(4);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(b"token ghp_tok end\n").await.unwrap();
        });
        let mut reader = RedactingReader::new(rx, Arc::new(redactor()));
        let mut out = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            reader.read_to_string(&mut out),
        )
        .await
        .unwrap()
        .unwrap();
        writer.await.unwrap();
        assert_eq!(out, "token [redacted:GITHUB_TOKEN] end\n");
    }

    #[test]
    fn secret_is_redacted_in_debug_and_display() {
        let s = Secret::new("sk-ant-123");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(s.expose(), "sk-ant-123");
    }
}
