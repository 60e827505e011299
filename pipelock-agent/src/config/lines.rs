//! Where each key of a YAML file is: a map from key path
//! (`forward_proxy.idle_timeout_seconds`, `dlp.patterns[0].regex`) to its
//! 1-based line, read from the parser events of `yaml-rust2`. serde tells
//! which key is wrong; this tells the operator where it is.
use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

/// Key paths of one YAML document and the line each starts on.
#[derive(Debug, Default, Clone)]
pub struct KeyLines {
    lines: HashMap<String, usize>,
}

impl KeyLines {
    /// Indexes `text`. A file the parser rejects gives an empty index (serde
    /// reports that error with its own location).
    pub fn index(text: &str) -> KeyLines {
        let mut out = KeyLines::default();
        let mut parser = Parser::new_from_str(text);
        let _ = walk_document(&mut parser, &mut out.lines);
        out
    }

    /// The line of `path`, if the file has that key.
    pub fn line(&self, path: &str) -> Option<usize> {
        self.lines.get(path).copied()
    }

    /// True when the file sets `path` or anything below it.
    pub fn contains(&self, path: &str) -> bool {
        self.lines.contains_key(path)
    }

    /// Every key path the file sets.
    pub fn paths(&self) -> impl Iterator<Item = (&str, usize)> {
        self.lines.iter().map(|(p, l)| (p.as_str(), *l))
    }
}

type Lines = HashMap<String, usize>;

fn walk_document(p: &mut Parser<std::str::Chars<'_>>, lines: &mut Lines) -> Option<()> {
    loop {
        let (ev, _) = p.next_token().ok()?;
        match ev {
            Event::StreamEnd => return Some(()),
            Event::MappingStart(..) => walk_mapping(p, "", lines)?,
            Event::SequenceStart(..) => walk_sequence(p, "", lines)?,
            _ => {}
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Walks the value that starts with `ev`; returns after its last event.
fn walk_value(
    p: &mut Parser<std::str::Chars<'_>>,
    ev: Event,
    path: &str,
    lines: &mut Lines,
) -> Option<()> {
    match ev {
        Event::MappingStart(..) => walk_mapping(p, path, lines),
        Event::SequenceStart(..) => walk_sequence(p, path, lines),
        _ => Some(()),
    }
}

fn walk_mapping(p: &mut Parser<std::str::Chars<'_>>, path: &str, lines: &mut Lines) -> Option<()> {
    loop {
        let (key, mark) = p.next_token().ok()?;
        let name = match key {
            Event::MappingEnd => return Some(()),
            Event::Scalar(s, ..) => s,
            // A complex key: skip it and its value without recording.
            other => {
                walk_value(p, other, "?", &mut Lines::new())?;
                let (v, _) = p.next_token().ok()?;
                walk_value(p, v, "?", &mut Lines::new())?;
                continue;
            }
        };
        let key_path = join(path, &name);
        lines.entry(key_path.clone()).or_insert(mark.line());
        let (value, _) = p.next_token().ok()?;
        walk_value(p, value, &key_path, lines)?;
    }
}

fn walk_sequence(p: &mut Parser<std::str::Chars<'_>>, path: &str, lines: &mut Lines) -> Option<()> {
    let mut i = 0usize;
    loop {
        let (ev, mark) = p.next_token().ok()?;
        if matches!(ev, Event::SequenceEnd) {
            return Some(());
        }
        let item = format!("{path}[{i}]");
        lines.entry(item.clone()).or_insert(mark.line());
        walk_value(p, ev, &item, lines)?;
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_keys_and_sequences_have_their_lines() {
        let text = "version: 1\nforward_proxy:\n  enabled: true\n  idle_timeout_seconds: 60\ndlp:\n  patterns:\n    - name: a\n      regex: b\n    - {name: c, regex: d}\n";
        let k = KeyLines::index(text);
        assert_eq!(k.line("version"), Some(1));
        assert_eq!(k.line("forward_proxy"), Some(2));
        assert_eq!(k.line("forward_proxy.idle_timeout_seconds"), Some(4));
        assert_eq!(k.line("dlp.patterns[0].regex"), Some(8));
        assert_eq!(k.line("dlp.patterns[1].name"), Some(9));
        assert_eq!(k.line("dlp.patterns[2]"), None);
    }
}
