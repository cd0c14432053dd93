//! Splits a byte stream into newline-terminated lines, refusing any line longer
//! than a bound so a broken or hostile peer cannot make the proxy buffer forever;
//! [`BodyLines`] reads them from a streaming response (the view watch, answers).

use http_body_util::BodyExt;
use hyper::body::Incoming;

/// Longest view line accepted from the agent: a full view (`--discovery full`) is
/// about 700 bytes per service, so this holds a mesh of over 300,000 services; an
/// on-demand view holds only the workload's own services.
pub(crate) const MAX_VIEW_LINE: usize = 256 * 1024 * 1024;
/// Longest answer line accepted from the agent (one destination and its backends).
pub(crate) const MAX_ANSWER_LINE: usize = 16 * 1024 * 1024;

/// A line grew past the bound without a newline.
#[derive(Debug, thiserror::Error)]
#[error("a line from the agent exceeds {max} bytes")]
pub(crate) struct LineTooLong {
    /// The bound.
    pub max: usize,
}

/// Collects chunks and yields the complete lines in them.
#[derive(Debug)]
pub(crate) struct Lines {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    max: usize,
}

impl Lines {
    /// A splitter refusing lines longer than `max` bytes (newline excluded).
    pub(crate) fn new(max: usize) -> Lines {
        Lines {
            buf: Vec::new(),
            scanned: 0,
            max,
        }
    }

    /// Adds `chunk`; returns the lines it completed, without their newlines (blank
    /// lines are skipped).
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, LineTooLong> {
        self.buf.extend_from_slice(chunk);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
            let end = self.scanned + offset;
            if end - start > self.max {
                return Err(LineTooLong { max: self.max });
            }
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.iter().all(u8::is_ascii_whitespace) {
                lines.push(line.to_vec());
            }
            start = end + 1;
            self.scanned = start;
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
        if self.buf.len() > self.max {
            return Err(LineTooLong { max: self.max });
        }
        Ok(lines)
    }
}

/// Why a stream of lines stopped short.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LineError {
    /// The body broke.
    #[error("the stream failed: {0}")]
    Stream(#[source] hyper::Error),
    /// A line was too long.
    #[error(transparent)]
    TooLong(#[from] LineTooLong),
}

/// The complete lines of a streaming body, each at most a given length.
#[derive(Debug)]
pub(crate) struct BodyLines {
    body: Incoming,
    lines: Lines,
}

impl BodyLines {
    /// Lines of `body`, none longer than `max` bytes.
    pub(crate) fn new(body: Incoming, max: usize) -> BodyLines {
        BodyLines {
            body,
            lines: Lines::new(max),
        }
    }

    /// The lines the next data frame completed (perhaps none); `None` once the
    /// body ends.
    pub(crate) async fn next_batch(&mut self) -> Result<Option<Vec<Vec<u8>>>, LineError> {
        let frame = match self.body.frame().await {
            None => return Ok(None),
            Some(frame) => frame.map_err(LineError::Stream)?,
        };
        match frame.into_data() {
            Ok(data) => Ok(Some(self.lines.push(&data)?)),
            Err(_) => Ok(Some(Vec::new())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_across_chunks() {
        let mut l = Lines::new(100);
        assert!(l.push(b"{\"a\":").unwrap().is_empty());
        assert_eq!(
            l.push(b"1}\n\n{\"b\"").unwrap(),
            vec![b"{\"a\":1}".to_vec()]
        );
        assert_eq!(
            l.push(b":2}\r\n{}\n").unwrap(),
            vec![b"{\"b\":2}".to_vec(), b"{}".to_vec()]
        );
    }

    #[test]
    fn refuses_long_lines() {
        let mut l = Lines::new(4);
        assert!(l.push(b"1234\n").is_ok());
        assert!(l.push(b"123").is_ok());
        assert!(l.push(b"45").is_err());
        let mut l = Lines::new(4);
        assert!(l.push(b"12345\n").is_err());
    }
}
