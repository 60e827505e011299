//! `config::parse`: any text gives Ok or Err, never a panic, and an error's
//! line is within the text (1-based, at most the number of lines).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = pipelock_agent::config::parse(text) {
        if let Some(line) = e.line {
            // Lines as YAML counts them (\n, \r\n or a lone \r ends one),
            // or as split by \n alone: the larger, so either reading passes.
            let breaks = text.matches('\n').count() + text.matches('\r').count()
                - text.matches("\r\n").count();
            let lines = (breaks + 1).max(text.split('\n').count());
            assert!(
                (1..=lines).contains(&line),
                "error line {line} outside a text of {lines} lines: {e}"
            );
        }
    }
});
