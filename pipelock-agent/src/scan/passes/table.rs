//! Credentials in tables (CSV, TSV, `;`- or `|`-separated exports): a
//! header row naming a credential column (`service,username,password`)
//! and the rows under it. No regex can tie a value to its column, so
//! Hyperscan only flags the lines where a credential name ends a header
//! field ([`TRIGGERS`]); [`TableReader`] then reads the text line by line,
//! takes a flagged line that is a header, and rewrites each credential
//! cell of the rows under it as a `name: value` line, the form of a config
//! file, which the caller scans like any text: the credential-assignment
//! rule judges the value there (placeholders, masks and low entropy are
//! not findings), so a table is judged exactly as a config file is.
//!
//! The reader is a state machine over whole lines: a row is judged only
//! once its line has ended (or the text has), so a stream cut into any
//! chunks reads the same rows under the same headers as one buffer does.
//! Its memory is one line, bounded ([`MAX_HEADER`] outside a table,
//! [`MAX_ROW`] inside one); a longer line is neither a header nor a row.
//! Outside a table it copies nothing: a flagged line that began in an
//! earlier chunk is read back from the caller's history of recent bytes.

/// Hyperscan expressions (caseless) marking a line that may be such a
/// header: a credential name at the end of a field, followed by a
/// delimiter or the end of the line.
pub const TRIGGERS: &[&str] =
    &[r#"(?:password|passwd|secret|api[_ ]?key|private_?key|token)["']?(?:[,;\t|]|\r?\n)"#];

/// Names of credential columns (lower case, matched inside the name).
const CREDENTIAL_NAMES: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "api key",
    "token",
    "private_key",
];

/// Columns whose name holds a credential word but whose cells are not secret.
const NOT_CREDENTIAL_NAMES: &[&str] = &["hash", "expires", "type", "id", "url", "hint", "length"];

/// Rows read under one header at most.
const MAX_ROWS: usize = 1000;
/// Longest header field.
const MAX_NAME: usize = 40;
/// Most columns.
const MAX_COLUMNS: usize = 64;

const DELIMITERS: &[u8] = b",;\t|";

/// The fields of `line` split at `delim`; a field in double quotes keeps
/// its delimiters and loses its quotes (`""` is a quote).
fn fields(line: &[u8], delim: u8) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut quoted = false;
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        if quoted {
            if b == b'"' {
                if line.get(i + 1) == Some(&b'"') {
                    cur.push(b'"');
                    i += 1;
                } else {
                    quoted = false;
                }
            } else {
                cur.push(b);
            }
        } else if b == b'"' && cur.iter().all(u8::is_ascii_whitespace) {
            cur.clear();
            quoted = true;
        } else if b == delim {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(b);
        }
        i += 1;
    }
    out.push(cur);
    out
}

/// A header row: its delimiter, its column count and the credential
/// columns (index, name as a key).
struct Header {
    delim: u8,
    columns: usize,
    credentials: Vec<(usize, Vec<u8>)>,
}

/// The column name as a key: lower case, `[a-z0-9_]`, others become `_`.
fn as_key(name: &[u8]) -> Vec<u8> {
    name.iter()
        .map(|b| {
            let b = b.to_ascii_lowercase();
            if b.is_ascii_alphanumeric() { b } else { b'_' }
        })
        .collect()
}

/// Longest header line read (without its `\r`). A stream's history of
/// recent bytes must be longer, so that a header line that began in an
/// earlier chunk is still in it.
pub const MAX_HEADER: usize = 500;
/// Longest row read (a longer line ends its table).
const MAX_ROW: usize = 16 * 1024;

fn header(line: &[u8]) -> Option<Header> {
    // Cheap first: a header is short, all name bytes and delimiters, and
    // names a credential.
    if line.len() > MAX_HEADER
        || !line.iter().all(|&b| {
            b.is_ascii_alphanumeric() || b" _.-\"'".contains(&b) || DELIMITERS.contains(&b)
        })
    {
        return None;
    }
    let lower = line.to_ascii_lowercase();
    if !CREDENTIAL_NAMES
        .iter()
        .any(|w| memchr::memmem::find(&lower, w.as_bytes()).is_some())
    {
        return None;
    }
    for &delim in DELIMITERS {
        if memchr::memchr(delim, line).is_none() {
            continue;
        }
        let names = fields(line, delim);
        if names.len() < 2 || names.len() > MAX_COLUMNS {
            continue;
        }
        let names_ok = names.iter().all(|n| {
            let n = n.trim_ascii();
            !n.is_empty()
                && n.len() <= MAX_NAME
                && n.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b" _.-".contains(&b))
        });
        if !names_ok {
            continue;
        }
        // A column name of at most two words ("DB Password"), not a phrase.
        let credentials: Vec<(usize, Vec<u8>)> = names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let n = n.trim_ascii();
                let lower = n.to_ascii_lowercase();
                let found = |w: &&str| memchr::memmem::find(&lower, w.as_bytes()).is_some();
                let words = n.split(|&b| b == b' ').filter(|w| !w.is_empty()).count();
                (words <= 2
                    && CREDENTIAL_NAMES.iter().any(found)
                    && !NOT_CREDENTIAL_NAMES.iter().any(found))
                .then(|| (i, as_key(n)))
            })
            .collect();
        if !credentials.is_empty() {
            return Some(Header {
                delim,
                columns: names.len(),
                credentials,
            });
        }
    }
    None
}

/// The table whose rows are being read.
struct OpenTable {
    header: Header,
    rows: usize,
}

/// Reads text, whole or in chunks, line by line, and writes the credential
/// cells of its tables as `name: value` lines (cells with a line break or a
/// space are skipped: no secret has them). Which lines were flagged is told
/// by the caller ([`TableReader::feed`]'s `ends`): only a flagged line is
/// tried as a header. A row of another shape, or the [`MAX_ROWS`]th, ends a
/// table; that line is then tried as a header itself.
#[derive(Default)]
pub struct TableReader {
    /// The current line's bytes so far, when it is short enough to be read
    /// and `carried`.
    line: Vec<u8>,
    /// `line` holds the current line's bytes before this chunk; otherwise
    /// they are the end of the caller's history.
    carried: bool,
    /// The current line is longer than a header (outside a table) or a
    /// row (inside one) may be: it is neither.
    overlong: bool,
    /// A trigger ended in the current line.
    flagged: bool,
    table: Option<OpenTable>,
}

impl std::fmt::Debug for TableReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableReader")
            .field("line", &self.line.len())
            .field("in_table", &self.table.is_some())
            .finish()
    }
}

impl TableReader {
    /// Reads the next bytes of the text. `history`: the bytes just before
    /// `data` the caller keeps (at least the last [`MAX_HEADER`] + 2 of
    /// them, or all since the text began). `ends`: where trigger matches
    /// ended in `data` (offsets of the byte after each match, ascending);
    /// a match flags the line its last byte is in. Cells go to `out`.
    pub fn feed(&mut self, history: &[u8], data: &[u8], ends: &[usize], out: &mut Vec<u8>) {
        let mut pos = 0;
        let mut ends = ends.iter().map(|e| e.saturating_sub(1)).peekable();
        while pos < data.len() {
            if self.table.is_none() && !self.flagged {
                // Nothing to read before the line of the next trigger:
                // the lines before it are skipped, not split.
                while ends.next_if(|&l| l < pos).is_some() {}
                let until = ends.peek().map_or(data.len(), |&l| l.min(data.len()));
                if let Some(k) = memchr::memrchr(b'\n', &data[pos..until]) {
                    self.new_line(true);
                    pos += k + 1;
                }
                if ends.peek().is_none() {
                    // The line going on is read back from the history if
                    // a later chunk flags it.
                    self.new_line(false);
                    return;
                }
            }
            if !self.carried {
                // This line began before `data`: its start is in the history.
                let start = memchr::memrchr(b'\n', history).map_or(0, |i| i + 1);
                self.new_line(true);
                self.push(&history[start..]);
            }
            let nl = memchr::memchr(b'\n', &data[pos..]).map(|i| pos + i);
            let line_end = nl.unwrap_or(data.len());
            while ends.next_if(|&l| l <= line_end).is_some() {
                self.flagged = true;
            }
            self.push(&data[pos..line_end]);
            let Some(nl) = nl else { return };
            self.end_line(out);
            pos = nl + 1;
        }
    }

    /// The text ended: its last line, if it had no line break, is read.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        // A line left in the history was flagged by nothing: it is not read.
        if self.carried && (!self.line.is_empty() || self.overlong) {
            self.end_line(out);
        }
        self.table = None;
        self.flagged = false;
    }

    /// Forgets the current line's bytes: the next line is `carried` from
    /// here, or left in the history.
    fn new_line(&mut self, carried: bool) {
        self.line.clear();
        self.overlong = false;
        self.carried = carried;
    }

    /// Adds bytes to the current line, up to the longest line it can use.
    fn push(&mut self, bytes: &[u8]) {
        if self.overlong {
            return;
        }
        // A header's `\r` is not part of its length.
        let max = if self.table.is_some() {
            MAX_ROW
        } else {
            MAX_HEADER + 1
        };
        if self.line.len() + bytes.len() > max {
            self.overlong = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    /// The current line ended: a row of the open table, or else (when
    /// flagged) a header.
    fn end_line(&mut self, out: &mut Vec<u8>) {
        let flagged = std::mem::take(&mut self.flagged);
        let overlong = std::mem::take(&mut self.overlong);
        let mut line = std::mem::take(&mut self.line);
        let text = line.strip_suffix(b"\r").unwrap_or(&line);
        if !self.read_row(text, overlong, out) && flagged && !overlong {
            self.table = header(text).map(|header| OpenTable { header, rows: 0 });
        }
        line.clear();
        self.line = line;
    }

    /// Reads `text` as a row of the open table, writing its credential
    /// cells; false (and the table ended) when it is none.
    fn read_row(&mut self, text: &[u8], overlong: bool, out: &mut Vec<u8>) -> bool {
        let Some(t) = self.table.as_mut() else {
            return false;
        };
        if !overlong && t.rows < MAX_ROWS {
            let cells = fields(text, t.header.delim);
            if cells.len() == t.header.columns {
                t.rows += 1;
                for (i, key) in &t.header.credentials {
                    let v = cells[*i].trim_ascii();
                    if v.is_empty() || v.iter().any(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    out.extend_from_slice(key);
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(v);
                    out.push(b'\n');
                }
                return true;
            }
        }
        self.table = None;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line flagged (the reader's state machine alone).
    fn every_line(data: &[u8]) -> Vec<usize> {
        let mut ends: Vec<usize> = memchr::memchr_iter(b'\n', data).map(|i| i + 1).collect();
        ends.push(data.len());
        ends
    }

    /// `data` read in `pieces` (cut at the given offsets), with `ends`.
    fn read_cut(data: &[u8], ends: &[usize], cuts: &[usize]) -> Vec<u8> {
        let mut r = TableReader::default();
        let mut out = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain([&data.len()]) {
            let local: Vec<usize> = ends
                .iter()
                .filter(|&&e| e > from && e <= to)
                .map(|e| e - from)
                .collect();
            // The history a stream keeps: its last 512 bytes.
            r.feed(
                &data[from.saturating_sub(512)..from],
                &data[from..to],
                &local,
                &mut out,
            );
            from = to;
        }
        r.finish(&mut out);
        out
    }

    fn lines(data: &str) -> Vec<String> {
        let b = data.as_bytes();
        String::from_utf8(read_cut(b, &every_line(b), &[]))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn credential_columns_become_assignments() {
        let csv =
            "service,username,password\nbank,alice,Qm7#xK2pZ9vL\r\nmail,bob,\"Tr8,vN3\"\"kW6\"\n";
        assert_eq!(
            lines(csv),
            ["password: Qm7#xK2pZ9vL", "password: Tr8,vN3\"kW6"]
        );
        let tsv = "name\tapi key\tnote\nstripe\tsk9Xq2LmP0wZ\tprod\n";
        assert_eq!(lines(tsv), ["api_key: sk9Xq2LmP0wZ"]);
        let semi = "x\n\"Host\";\"DB Password\"\ndb1;hunter2Long\n";
        assert_eq!(lines(semi), ["db_password: hunter2Long"]);
        // The last row needs no line break when the text ends there.
        assert_eq!(
            lines("user,password\nalice,Qm7#xK2pZ9vL"),
            ["password: Qm7#xK2pZ9vL"]
        );
    }

    #[test]
    fn prose_and_other_tables_are_not_tables() {
        for text in [
            "Enter your password, then press OK.\nThe token expires in 1h.\n",
            "id,name,amount\n1,rent,900\n",
            "user,password_hash\nalice,$2b$12$abc\n",
            "a,token_expires\nx,2026-12-01\n",
            "Your password, please: hunter2\n",
            "Enter your password, then sign in\nUse a strong one, like Xk9#mP2qLw7z\n",
        ] {
            assert!(lines(text).is_empty(), "{text}");
        }
    }

    #[test]
    fn only_a_flagged_line_is_a_header() {
        let csv = b"user,password\nalice,Qm7#xK2pZ9vL\n";
        assert!(read_cut(csv, &[], &[]).is_empty());
        // The trigger ends at the header's line break (or inside the line).
        for end in [14, 6] {
            assert_eq!(read_cut(csv, &[end], &[]), b"password: Qm7#xK2pZ9vL\n");
        }
        // A trigger in a row does not make it a header.
        assert!(read_cut(csv, &[20], &[]).is_empty());
    }

    #[test]
    fn a_row_of_another_shape_ends_the_table_and_may_begin_the_next() {
        let csv = "user,password\nalice,Qm7#xK2pZ9vL\n\nnot, a, row, of it\nbob,Tr8!vN3kW6yB\n";
        assert_eq!(lines(csv), ["password: Qm7#xK2pZ9vL"]);
        let two = "a,token\nx,Qm7#xK2pZ9vL\nb,c,secret\ny,z,Tr8!vN3kW6yB\n";
        assert_eq!(lines(two), ["token: Qm7#xK2pZ9vL", "secret: Tr8!vN3kW6yB"]);
    }

    #[test]
    fn lines_too_long_are_neither_headers_nor_rows() {
        let long_header = format!("{},password\nx,Qm7#xK2pZ9vL\n", "a,".repeat(MAX_HEADER));
        assert!(lines(&long_header).is_empty());
        let long_row = format!(
            "user,password\n{},Qm7#xK2pZ9vL\nbob,Tr8!vN3kW6yB\n",
            "a".repeat(MAX_ROW)
        );
        assert!(lines(&long_row).is_empty());
    }

    /// Any chunking reads what one buffer reads: rows cut anywhere, headers
    /// cut anywhere, triggers at any line.
    #[test]
    fn every_chunking_reads_the_same_cells() {
        let long_row = format!(
            "user,password\n{},Qm7#xK2pZ9vL\nbob,Tr8!vN3kW6yB\n",
            "a".repeat(MAX_ROW - 20)
        );
        // A header just short enough, then one just too long.
        let wide = |n: usize| {
            let names: Vec<String> = (0..n).map(|i| format!("column{i:03}")).collect();
            let row = vec!["v"; n + 1].join(",");
            format!("{},password\n{row}Qm7#xK2pZ9vL\n", names.join(","))
        };
        let (fits, too_long) = (wide(MAX_HEADER / 10 - 2), wide(MAX_HEADER / 10));
        assert!(
            fits.find('\n').unwrap() <= MAX_HEADER && too_long.find('\n').unwrap() > MAX_HEADER
        );
        assert!(lines(&too_long).is_empty());
        let texts: [&[u8]; 6] = [
            fits.as_bytes(),
            b"prose\nservice,username,password\nbank,alice,Qm7#xK2pZ9vL\r\nmail,bob,\"Tr8,vN3\"\"kW6\"\nend\na,token\nx,y",
            b"-,token\n{ype\"okeyk\"WWWW\x00\x00,\x02\x01\x00aBj93d\xff\xff\nE5,gH7\x00j\n\n-,tok\nq,AKIAabcd",
            b"a,token\nx,Qm7#xK2pZ9vL\nb,c,secret\ny,z,Tr8!vN3kW6yB\n",
            b"user,password\nalice,Qm7#xK2pZ9vL",
            long_row.as_bytes(),
        ];
        for data in texts {
            let ends = every_line(data);
            let whole = read_cut(data, &ends, &[]);
            assert!(!whole.is_empty());
            let step = if data.len() > 1000 { 97 } else { 1 };
            for cut in (1..data.len()).step_by(step) {
                assert_eq!(read_cut(data, &ends, &[cut]), whole, "cut at {cut}");
            }
            for size in [1usize, 2, 3, 7, 13, 64, 4096] {
                let cuts: Vec<usize> = (size..data.len()).step_by(size).collect();
                assert_eq!(read_cut(data, &ends, &cuts), whole, "chunks of {size}");
            }
        }
    }
}
