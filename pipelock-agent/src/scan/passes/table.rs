//! Credentials in tables (CSV, TSV, `;`- or `|`-separated exports): a
//! header row naming a credential column (`service,username,password`)
//! and the rows under it. No regex can tie a value to its column, so
//! Hyperscan only flags a buffer where a credential name ends a header
//! field ([`TRIGGERS`]); this pass then reads its lines, finds the header
//! and rewrites each credential cell as a `name: value` line
//! ([`assignments`]), the form of a config file, which the caller scans
//! like any text: the credential-assignment rule judges the value there
//! (placeholders, masks and low entropy are not findings), so a table is
//! judged exactly as a config file is. Within one buffer (a stream chunk
//! and the bytes before it): rows far past their header in a later chunk
//! are not tied to it.

/// Hyperscan expressions (caseless) marking a buffer that may hold such a
/// header: a credential name at the end of a field, followed by a
/// delimiter or the end of the line.
pub const TRIGGERS: &[&str] =
    &[r#"(?:password|passwd|secret|api_?key|token)["']?(?:[,;\t|]|\r?\n)"#];

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

/// Longest header line read.
const MAX_HEADER: usize = MAX_COLUMNS * (MAX_NAME + 3);

/// Where the line of a trigger match ending at `end` starts, when that line
/// is a table header: the whole-buffer path reads a table's rows from there
/// and skips triggers on other lines (a credential word at a line's end in
/// prose). The look back is bounded, so many triggers on one long line
/// cost no more than the line.
pub fn header_start(data: &[u8], end: usize) -> Option<usize> {
    // The match's last byte is the delimiter or the line's `\n`.
    let last = end.checked_sub(1)?;
    let name_at = if data.get(last) == Some(&b'\n') {
        last.checked_sub(1)?
    } else {
        last
    };
    let floor = name_at.saturating_sub(MAX_HEADER);
    let start = match memchr::memrchr(b'\n', &data[floor..name_at]) {
        Some(i) => floor + i + 1,
        None if floor == 0 => 0,
        None => return None,
    };
    let rest = &data[name_at..data.len().min(start + MAX_HEADER + 2)];
    let stop = memchr::memchr(b'\n', rest).map_or(name_at + rest.len(), |i| name_at + i);
    let line = &data[start..stop];
    header(line.strip_suffix(b"\r").unwrap_or(line)).map(|_| start)
}

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

/// What [`assignments`] found in a buffer.
#[derive(Debug, Default)]
pub struct Cells {
    /// The credential cells as `name: value` lines.
    pub text: Vec<u8>,
    /// The header line of a table still going at the end of the buffer:
    /// its rows may go on in the next chunk.
    pub open: Option<Vec<u8>>,
    /// The buffer's last line, a row of the open table with no line break
    /// after it, was not judged: the chunk's end may have cut it (a cut
    /// cell is another value). The caller judges it when the text ends.
    pub held: bool,
}

/// Each credential cell of each table in `data` as a `name: value` line
/// (cells with a line break or a space are skipped: no secret has them).
/// `open`: the header of a table the bytes before `data` left open; the
/// first line of `data` is then taken as cut and skipped. `whole`: `data`
/// ends where the text ends (a whole buffer, or a stream's last line), so
/// its last line is a whole row; otherwise that row is held back.
pub fn assignments(data: &[u8], open: Option<&[u8]>, whole: bool) -> Cells {
    let mut out = Cells::default();
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .peekable();
    let mut carried = open;
    if carried.is_some() {
        lines.next();
    }
    loop {
        let (h, head) = match carried.take() {
            Some(head) => match header(head) {
                Some(h) => (h, head),
                None => continue,
            },
            None => {
                let Some(line) = lines.next() else { break };
                match header(line) {
                    Some(h) => (h, line),
                    None => continue,
                }
            }
        };
        // Open when the rows run to the end of the buffer (its last line
        // may be a row the chunk's end cut).
        let mut open = false;
        for _ in 0..MAX_ROWS {
            let Some(row) = lines.next() else {
                open = true;
                break;
            };
            if !whole && lines.peek().is_none() && !data.ends_with(b"\n") {
                out.held = true;
                open = true;
                break;
            }
            let cells = fields(row, h.delim);
            if cells.len() != h.columns {
                open = lines.peek().is_none();
                break;
            }
            for (i, key) in &h.credentials {
                let v = cells[*i].trim_ascii();
                if v.is_empty() || v.iter().any(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                out.text.extend_from_slice(key);
                out.text.extend_from_slice(b": ");
                out.text.extend_from_slice(v);
                out.text.push(b'\n');
            }
        }
        if open {
            out.open = Some(head.to_vec());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(data: &str) -> Vec<String> {
        String::from_utf8(assignments(data.as_bytes(), None, true).text)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn header_start_finds_the_header_line_of_a_trigger() {
        let data = b"prose ends with a password\nid,name,password\n1,a,b\n";
        // The trigger ends after `password\n` (prose) and after `password\n` (header).
        let prose_end = 27;
        assert_eq!(data[prose_end - 1], b'\n');
        assert_eq!(header_start(data, prose_end), None);
        let head_end = prose_end + "id,name,password\n".len();
        assert_eq!(header_start(data, head_end), Some(prose_end));
        // With a `\r\n` and a trigger at a middle column.
        let crlf = b"user,token,note\r\nx,y,z\r\n";
        assert_eq!(header_start(crlf, "user,token,".len()), Some(0));
        // A line longer than any header is not read back to its start.
        let long = [&[b'a'; 5000][..], b",token\n"].concat();
        assert_eq!(header_start(&long, long.len()), None);
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
    fn a_table_reaching_the_end_stays_open_for_the_next_chunk() {
        let a = assignments(b"service,username,password\nbank,alice", None, false);
        assert!(a.text.is_empty());
        let head = a.open.expect("open");
        assert_eq!(head, b"service,username,password");
        // The next buffer begins with the bytes kept before it: its first
        // line is cut and skipped.
        let b = assignments(
            b"ce,Qm7#xK2pZ9vL\nmail,bob,Tr8!vN3kW6yB\n",
            Some(&head),
            false,
        );
        assert_eq!(b.text, b"password: Tr8!vN3kW6yB\n");
        assert!(b.open.is_some());
        let c = assignments(
            b"x\nmail,bob,Tr8!vN3kW6yB\nThe end.\nMore prose\n",
            Some(&head),
            false,
        );
        assert!(c.open.is_none());
    }

    /// A chunk's last row with no line break may be cut inside a cell: it
    /// is held back (not judged as a shorter value), unless the text ends.
    #[test]
    fn a_row_the_chunk_may_have_cut_is_held_back() {
        let csv = b"user,password\nalice,Qm7#xK2pZ9vL\nbob,Tr8!vN";
        let cut = assignments(csv, None, false);
        assert_eq!(cut.text, b"password: Qm7#xK2pZ9vL\n");
        assert!(cut.held && cut.open.is_some());
        let whole = assignments(csv, None, true);
        assert_eq!(whole.text, b"password: Qm7#xK2pZ9vL\npassword: Tr8!vN\n");
        assert!(!whole.held);
    }

    #[test]
    fn a_row_of_another_shape_ends_the_table() {
        let csv = "user,password\nalice,Qm7#xK2pZ9vL\n\nnot, a, row, of it\nbob,Tr8!vN3kW6yB\n";
        assert_eq!(lines(csv), ["password: Qm7#xK2pZ9vL"]);
    }
}
