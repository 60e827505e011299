//! Shared by the fuzz targets: input split into a chunking plan and a payload.

/// Splits a fuzz input into chunk sizes and a payload: the first byte says
/// how many size bytes follow (0..=15); each size byte is one chunk's length
/// (0 allowed: an empty chunk), cycled; no size bytes means one chunk.
pub fn plan(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    let n = usize::from(n % 16).min(rest.len());
    rest.split_at(n)
}

/// `payload` cut into pieces by `sizes` (see [`plan`]).
pub fn chunks<'a>(payload: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![payload];
    }
    let mut out = Vec::new();
    let mut rest = payload;
    let mut i = 0;
    // Bounded: all-zero sizes would never advance.
    while !rest.is_empty() && out.len() < 4 * payload.len() + 16 {
        let n = usize::from(sizes[i % sizes.len()]).min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
        i += 1;
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}
