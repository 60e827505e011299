//! The cheap passes of a DLP text stream, for tokens with no literal for
//! Hyperscan to anchor on. Each classifies 64-byte blocks to skip clean text
//! and looks closely only where a token may be: `numeric` (card numbers,
//! SSNs, IBANs, … confirmed by `validators`) and `runs` (encoded runs worth
//! decoding) share one digit-driven classification (`blocks`) and carry a
//! `tail` between chunks; `seed` (BIP-39 seed phrases) has its own. `judge`
//! checks the bytes of a Hyperscan match that a regex cannot judge
//! (credential values by context and entropy, vendor example keys);
//! `delimited` decodes the hex sequences and escapes Hyperscan flags, and
//! `digit_free` finds the encoded runs with no digit (read in short fields);
//! `quoted` tells an injection phrase quoted to explain it from one to obey;
//! `table` rewrites the credential cells of a flagged CSV/TSV table as
//! assignments; `wrapped` joins the lines of a MIME part declared base64.
pub mod blocks;
pub mod delimited;
pub mod digit_free;
pub mod judge;
pub mod numeric;
pub mod quoted;
pub mod runs;
pub mod seed;
pub mod table;
pub mod tail;
pub mod validators;
pub mod wrapped;
