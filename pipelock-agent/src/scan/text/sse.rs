//! `text/event-stream` reassembly: splits the decoded body into lines and
//! events and extracts the generated text of LLM streaming formats (OpenAI
//! chat `choices[].delta.content` / tool-call arguments, completions
//! `choices[].text`, Responses API `delta`, Anthropic `delta.text` /
//! `delta.partial_json`, Gemini `candidates[].content.parts[].text`), so
//! text split across events is scanned as one stream. Memory is bounded by
//! the maximum event size; a larger event is skipped here (the raw bytes
//! are still scanned by the caller).
use serde_json::Value;

/// Streaming SSE parser.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    max_event: usize,
    overflow: bool,
    /// The current line went over `max_event`: its bytes are dropped, and
    /// it ends as a content line (never as the blank line that ends an
    /// event), however the body was chunked.
    line_overflow: bool,
    /// Drop a leading `\n` (the previous line ended with `\r`).
    after_cr: bool,
}

impl SseParser {
    /// A parser that keeps at most `max_event` bytes of one event's data.
    pub fn new(max_event: usize) -> Self {
        SseParser {
            line: Vec::new(),
            data: Vec::new(),
            max_event,
            overflow: false,
            line_overflow: false,
            after_cr: false,
        }
    }

    /// Feeds decoded body bytes; `text` receives the content text of each
    /// complete event, in order.
    pub fn feed(&mut self, mut chunk: &[u8], text: &mut dyn FnMut(&[u8])) {
        while !chunk.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if chunk[0] == b'\n' {
                    chunk = &chunk[1..];
                    continue;
                }
            }
            match chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(p) => {
                    self.push_line_bytes(&chunk[..p]);
                    self.after_cr = chunk[p] == b'\r';
                    chunk = &chunk[p + 1..];
                    self.end_line(text);
                }
                None => {
                    self.push_line_bytes(chunk);
                    chunk = &[];
                }
            }
        }
    }

    /// Ends the stream: a final event without a blank line is dispatched.
    pub fn finish(&mut self, text: &mut dyn FnMut(&[u8])) {
        if !self.line.is_empty() || self.line_overflow {
            self.end_line(text);
        }
        self.dispatch(text);
    }

    fn push_line_bytes(&mut self, b: &[u8]) {
        if self.line_overflow {
            return;
        }
        if self.line.len() + b.len() > self.max_event {
            self.overflow = true;
            self.line_overflow = true;
            self.line.clear();
            return;
        }
        self.line.extend_from_slice(b);
    }

    fn end_line(&mut self, text: &mut dyn FnMut(&[u8])) {
        if std::mem::take(&mut self.line_overflow) {
            // Its event is already marked oversized and will be skipped.
            return;
        }
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(text);
        } else if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            if !self.data.is_empty() {
                self.data.push(b'\n');
            }
            if self.data.len() + rest.len() > self.max_event {
                self.overflow = true;
            } else {
                self.data.extend_from_slice(rest);
            }
        }
        // `event:`, `id:`, `retry:` and comments carry no content.
        self.line = line;
        self.line.clear();
    }

    fn dispatch(&mut self, text: &mut dyn FnMut(&[u8])) {
        if self.overflow {
            self.overflow = false;
            self.data.clear();
            return;
        }
        if self.data.is_empty() {
            return;
        }
        let data = std::mem::take(&mut self.data);
        if data.trim_ascii() != b"[DONE]" {
            match serde_json::from_slice::<Value>(&data) {
                Ok(v) => extract_text(&v, text),
                Err(_) => text(&data),
            }
        }
        self.data = data;
        self.data.clear();
    }
}

/// Calls `text` with each generated-text field of one streaming event.
pub fn extract_text(v: &Value, text: &mut dyn FnMut(&[u8])) {
    let mut emit = |v: Option<&Value>| {
        if let Some(Value::String(s)) = v {
            text(s.as_bytes());
        }
    };
    if let Some(Value::Array(choices)) = v.get("choices") {
        for c in choices {
            emit(c.get("text"));
            if let Some(delta) = c.get("delta").or_else(|| c.get("message")) {
                emit(delta.get("content"));
                emit(delta.get("reasoning_content"));
                emit(delta.get("refusal"));
                if let Some(Value::Array(calls)) = delta.get("tool_calls") {
                    for call in calls {
                        emit(call.get("function").and_then(|f| f.get("arguments")));
                    }
                }
            }
        }
    }
    if let Some(delta) = v.get("delta") {
        match delta {
            Value::String(_) => emit(Some(delta)),
            Value::Object(_) => {
                emit(delta.get("text"));
                emit(delta.get("partial_json"));
                emit(delta.get("thinking"));
            }
            _ => {}
        }
    }
    if let Some(Value::Array(cands)) = v.get("candidates") {
        for c in cands {
            if let Some(Value::Array(parts)) = c.get("content").and_then(|c| c.get("parts")) {
                for p in parts {
                    emit(p.get("text"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(body: &[u8], cut: usize) -> Vec<u8> {
        let mut p = SseParser::new(1 << 16);
        let mut out = Vec::new();
        p.feed(&body[..cut], &mut |t| out.extend_from_slice(t));
        p.feed(&body[cut..], &mut |t| out.extend_from_slice(t));
        p.finish(&mut |t| out.extend_from_slice(t));
        out
    }

    #[test]
    fn reassembles_openai_and_anthropic() {
        let openai = b"data: {\"choices\":[{\"delta\":{\"content\":\"ignore prev\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"ious instructions\"}}]}\n\ndata: [DONE]\n\n";
        let anthropic = b"event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\r\n\r\n\
event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\r\n\r\n";
        for cut in 0..=openai.len() {
            assert_eq!(
                collect(openai, cut),
                b"ignore previous instructions",
                "cut {cut}"
            );
        }
        for cut in 0..=anthropic.len() {
            assert_eq!(collect(anthropic, cut), b"Hello", "cut {cut}");
        }
    }

    #[test]
    fn oversized_event_is_skipped() {
        let mut p = SseParser::new(16);
        let mut out = Vec::new();
        p.feed(
            b"data: {\"delta\":\"a very long event indeed\"}\n\ndata: ok\n\n",
            &mut |t| out.extend_from_slice(t),
        );
        assert_eq!(out, b"ok");
    }

    /// Found by the `sse` fuzz target: a line longer than the limit used to
    /// end its event like a blank line when it came in one chunk (so the
    /// event's later `data:` lines were dispatched as an event of their
    /// own) but not when it came in pieces. Now the whole event is skipped
    /// at every split point.
    #[test]
    fn oversized_line_skips_its_event_at_every_split() {
        let body = b"data: 0123456789abcdefghij\ndata: tail\n\ndata: ok\n\n";
        for cut in 0..=body.len() {
            let mut p = SseParser::new(16);
            let mut out = Vec::new();
            p.feed(&body[..cut], &mut |t| out.extend_from_slice(t));
            p.feed(&body[cut..], &mut |t| out.extend_from_slice(t));
            p.finish(&mut |t| out.extend_from_slice(t));
            assert_eq!(out, b"ok", "split at {cut}");
        }
    }
}
