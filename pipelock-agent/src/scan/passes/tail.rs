//! The last bytes of the previous chunk, kept by the streaming passes
//! (`numeric`, `runs`) so a token split across chunks can be rebuilt.

/// How many bytes of the previous chunks are kept.
pub const TAIL: usize = 64;

/// Up to [`TAIL`] most recent bytes of a stream.
#[derive(Clone, Copy, Debug)]
pub struct Tail {
    buf: [u8; TAIL],
    len: usize,
}

impl Default for Tail {
    fn default() -> Self {
        Tail {
            buf: [0; TAIL],
            len: 0,
        }
    }
}

impl Tail {
    /// Appends `chunk`, keeping only the last [`TAIL`] bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        if chunk.len() >= TAIL {
            self.buf.copy_from_slice(&chunk[chunk.len() - TAIL..]);
            self.len = TAIL;
        } else {
            let keep = (TAIL - chunk.len()).min(self.len);
            let mut next = [0u8; TAIL];
            next[..keep].copy_from_slice(&self.buf[self.len - keep..self.len]);
            next[keep..keep + chunk.len()].copy_from_slice(chunk);
            self.buf = next;
            self.len = keep + chunk.len();
        }
    }

    /// The kept bytes, oldest first.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes_across_small_and_large_chunks() {
        let mut t = Tail::default();
        t.push(b"abc");
        t.push(b"de");
        assert_eq!(t.bytes(), b"abcde");
        let big: Vec<u8> = (0..100u8).collect();
        t.push(&big);
        assert_eq!(t.bytes(), &big[100 - TAIL..]);
        t.push(b"z");
        assert_eq!(t.bytes().len(), TAIL);
        assert_eq!(t.bytes()[TAIL - 1], b'z');
        assert_eq!(t.bytes()[0], big[100 - TAIL + 1]);
    }
}
