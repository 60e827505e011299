//! Shell de-obfuscation of tool arguments, so a policy rule or the DLP scan
//! sees the command a shell would run: invisible characters dropped and
//! NFKC (full-width letters), `\NNN` octal and `\xHH` hex escapes decoded,
//! backticks and `$( … )` opened, `${IFS}` / `$IFS` as a space,
//! `${HOME:0:1}`-style slices as `/`, `$@` / `$*` removed, brace expansion
//! (`{rm,-rf,/}` → `rm -rf /`), quotes and backslashes stripped, whitespace
//! collapsed.
use unicode_normalization::UnicodeNormalization;

use crate::scan::text::normalize::is_invisible;

/// Longest argument string de-obfuscated (longer ones: their head).
const MAX_LEN: usize = 64 * 1024;

/// The de-obfuscated form of `s`.
pub fn deobfuscate(s: &str) -> String {
    let s: String = s
        .chars()
        .take(MAX_LEN)
        .nfkc()
        .filter(|c| !is_invisible(*c))
        .collect();
    let s = decode_escapes(&s);
    let s = s
        .replace("${IFS}", " ")
        .replace("$IFS", " ")
        .replace("$@", "")
        .replace("$*", "");
    let s = slices_to_slash(&s);
    let s = s.replace("$(", " ").replace(['`', ')'], " ");
    let s = expand_braces(&s);
    let s: String = s
        .chars()
        .filter(|c| !matches!(c, '\'' | '"' | '\\'))
        .collect();
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `\NNN` (octal) and `\xHH` (hex) escapes, as `$'…'` and `printf` decode them.
fn decode_escapes(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            if (b[i + 1] == b'x' || b[i + 1] == b'X')
                && let Some(v) = b
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
            let oct: Vec<u8> = b[i + 1..]
                .iter()
                .take(3)
                .take_while(|c| (b'0'..=b'7').contains(c))
                .copied()
                .collect();
            if oct.len() == 3
                && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&oct).unwrap_or("x"), 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `${NAME:0:1}` (a one-character slice, how `/` is spelled without a slash).
fn slices_to_slash(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) if after[..end].contains(":0:1") => {
                out.push('/');
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `{a,b,c}` → `a b c` (what bash makes of a brace list as a command line).
fn expand_braces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if after[..close].contains(',') && !after[..close].contains('{') => {
                out.push(' ');
                out.push_str(&after[..close].replace(',', " "));
                out.push(' ');
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::deobfuscate;

    #[test]
    fn obfuscations_resolve() {
        assert_eq!(deobfuscate("{rm,-rf,/}"), "rm -rf /");
        assert_eq!(deobfuscate("rm${IFS}-rf${IFS}/tmp/x"), "rm -rf /tmp/x");
        assert_eq!(deobfuscate("r''m -r\"f\" /"), "rm -rf /");
        assert_eq!(deobfuscate("`echo rm` -rf /"), "echo rm -rf /");
        assert_eq!(
            deobfuscate("$(echo cat) ${HOME:0:1}etc${HOME:0:1}shadow"),
            "echo cat /etc/shadow"
        );
        assert_eq!(deobfuscate("\\x72\\x6d -rf /"), "rm -rf /");
        assert_eq!(deobfuscate("\\162\\155 -rf /"), "rm -rf /");
        assert_eq!(deobfuscate("ｒｍ -rf /"), "rm -rf /");
        assert_eq!(deobfuscate("r\u{200b}m -rf /"), "rm -rf /");
        assert_eq!(
            deobfuscate("get balance for {\"a\":1}"),
            "get balance for {a:1}"
        );
    }
}
