//! Base64 wrapped in short lines, as MIME writes it (a mail, a multipart
//! part, a `.eml` upload): each line alone is too short for the run pass or
//! splits a secret in two. Hyperscan flags a buffer holding a
//! `Content-Transfer-Encoding: base64` header ([`TRIGGERS`]); this pass
//! finds the body after that header block and joins its lines
//! ([`bodies`]), which the caller decodes and scans as one run. A body
//! that reaches a chunk's end goes on in the next (lines of a multiple of
//! four characters keep their alignment from any line).

/// Hyperscan expressions (caseless) marking a buffer worth reading.
pub const TRIGGERS: &[&str] = &[r"content-transfer-encoding:[ \t]*base64"];

const HEADER: &[u8] = b"content-transfer-encoding:";

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')
}

/// What [`bodies`] found in a buffer.
#[derive(Debug, Default)]
pub struct Bodies {
    /// The base64 body of each part declared base64, its lines joined.
    pub bodies: Vec<Vec<u8>>,
    /// The last body reaches the end of the buffer (it may go on in the
    /// next chunk).
    pub open: bool,
}

/// The joined base64 lines from the start of `lines` (at most `max` bytes),
/// and whether they reach the end.
fn join<'a>(lines: impl Iterator<Item = &'a [u8]>, max: usize) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    for line in lines {
        let line = line.trim_ascii_end();
        if line.is_empty() || !line.iter().all(|&b| is_base64(b)) {
            return (body, false);
        }
        let room = max.saturating_sub(body.len());
        body.extend_from_slice(&line[..line.len().min(room)]);
        if body.len() >= max {
            return (body, false);
        }
    }
    (body, true)
}

fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// The base64 body of each part declared base64 in `data`, its lines
/// joined, each at most `max` bytes. `continuing`: the previous chunk left
/// a body open, so `data` begins inside one (its first line, cut, is
/// skipped).
pub fn bodies(data: &[u8], max: usize, continuing: bool) -> Bodies {
    let mut out = Bodies::default();
    if continuing {
        let (body, open) = join(lines(data).skip(1), max);
        out.open = open && !body.is_empty();
        if !body.is_empty() {
            out.bodies.push(body);
        }
    }
    let lower = data.to_ascii_lowercase();
    for at in memchr::memmem::find_iter(&lower, HEADER) {
        // The header block ends at the first empty line.
        let mut rest = lines(&data[at..]);
        if !rest.by_ref().any(<[u8]>::is_empty) {
            continue;
        }
        let (body, open) = join(rest, max);
        out.open = open && !body.is_empty();
        if !body.is_empty() {
            out.bodies.push(body);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lines_after_the_header_block_are_joined() {
        let mail = "From: a@example.test\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\nYWJj\r\nZGVm\r\n\r\n--boundary--\r\n";
        let b = bodies(mail.as_bytes(), 1024, false);
        assert_eq!(b.bodies, [b"YWJjZGVm".to_vec()]);
        assert!(!b.open);
        let part = "content-transfer-encoding:base64\n\nQUJD\nREVG\n--b\n";
        assert_eq!(
            bodies(part.as_bytes(), 6, false).bodies,
            [b"QUJDRE".to_vec()]
        );
    }

    #[test]
    fn a_body_reaching_the_end_goes_on_in_the_next_chunk() {
        let first = bodies(
            b"Content-Transfer-Encoding: base64\n\nQUJD\nRE",
            1024,
            false,
        );
        assert_eq!(first.bodies, [b"QUJDRE".to_vec()]);
        assert!(first.open);
        let next = bodies(b"JD\nREVG\nR0hJ\n\nend", 1024, true);
        assert_eq!(next.bodies, [b"REVGR0hJ".to_vec()]);
        assert!(!next.open);
    }

    #[test]
    fn no_body_no_output() {
        for text in [
            "Content-Transfer-Encoding: base64",
            "Content-Transfer-Encoding: base64\n\nnot base64, a sentence.\n",
            "we set Content-Transfer-Encoding: base64 on parts\n",
        ] {
            let b = bodies(text.as_bytes(), 1024, false);
            assert!(b.bodies.is_empty() && !b.open, "{text}");
        }
    }
}
