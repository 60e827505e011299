//! One HTTP body under scan, as it streams: the content decoder (gzip, br,
//! zstd, … with bomb limits), the text scanner of the decoded bytes and, for
//! `text/event-stream`, the SSE parser with a second text scanner of the
//! events' generated text (`sse_content`). It reports hits and how the body
//! ended; what they mean is up to the caller.
use std::sync::Arc;

use super::{
    Error,
    engine::Engine,
    text::{
        Hit, RunLimits, TextScanner,
        decode::{ContentCoding, ContentDecoder, DecodeLimits, DecodeStatus},
        sse::SseParser,
    },
};

/// What a body is scanned for, and its limits.
#[derive(Clone, Copy, Debug)]
pub struct BodySpec {
    /// Location the hits of the decoded body report (`request_body`, `response_body`).
    pub location: &'static str,
    /// DLP patterns and passes.
    pub dlp: bool,
    /// Prompt-injection patterns.
    pub injection: bool,
    /// Reassemble `text/event-stream` events and scan their text as well.
    pub sse: bool,
    /// Decompression-bomb limits.
    pub decode_limits: DecodeLimits,
    /// Encoded-secret decoding limits.
    pub run_limits: RunLimits,
    /// Largest SSE event reassembled (bytes of `data:`).
    pub max_sse_event: usize,
}

/// How a body fared with a chunk.
#[derive(Debug)]
pub enum BodyStatus {
    /// Scanned; more chunks may follow unless this one was the last.
    Ok,
    /// A decoding limit was hit: the rest of the body is not scanned.
    Bomb,
    /// The content coding could not be decoded: the rest is not scanned.
    Undecodable,
    /// Scanning failed: the rest is not scanned. Reported in preference to
    /// a decoding status of the same chunk.
    Error(Error),
}

/// The scanning state of one body. Constant memory per body (bounded by the
/// decoder's window, the scanners' rings and the largest SSE event).
pub struct BodyScanner {
    decoder: ContentDecoder,
    text: TextScanner,
    sse: Option<(SseParser, TextScanner)>,
    /// Bytes the decoder produced so far (what the text scanner saw).
    decoded: u64,
}

impl std::fmt::Debug for BodyScanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyScanner")
            .field("decoder", &self.decoder)
            .field("text", &self.text)
            .field("sse", &self.sse.is_some())
            .finish()
    }
}

impl BodyScanner {
    /// Opens the decoder for `codings` (as listed in `Content-Encoding`) and
    /// the scanners `spec` asks for.
    pub fn new(
        engine: &Arc<Engine>,
        codings: &[ContentCoding],
        spec: &BodySpec,
    ) -> Result<Self, Error> {
        let decoder = ContentDecoder::new(codings, spec.decode_limits)?;
        let text = TextScanner::new(
            engine,
            spec.dlp,
            spec.injection,
            spec.location,
            spec.run_limits,
        )?;
        let sse = if spec.sse {
            Some((
                SseParser::new(spec.max_sse_event),
                TextScanner::new(
                    engine,
                    spec.dlp,
                    spec.injection,
                    "sse_content",
                    spec.run_limits,
                )?,
            ))
        } else {
            None
        };
        Ok(BodyScanner {
            decoder,
            text,
            sse,
            decoded: 0,
        })
    }

    /// Decodes and scans one chunk (`eos`: the last one), pushing hits to
    /// `hits`. After `eos` or any status but [`BodyStatus::Ok`] the body is
    /// over: the scanner is to be dropped.
    pub fn feed(&mut self, chunk: &[u8], eos: bool, hits: &mut Vec<Hit>) -> BodyStatus {
        let BodyScanner {
            decoder,
            text,
            sse,
            decoded,
        } = self;
        let mut error: Option<Error> = None;
        let status = decoder.feed(chunk, eos, &mut |data| {
            if error.is_some() {
                return;
            }
            *decoded += data.len() as u64;
            if let Err(e) = text.feed(data, hits) {
                error = Some(e);
                return;
            }
            if let Some((parser, content)) = sse.as_mut() {
                parser.feed(data, &mut |t| {
                    if error.is_none()
                        && let Err(e) = content.feed(t, hits)
                    {
                        error = Some(e);
                    }
                });
            }
        });
        if (eos || status != DecodeStatus::Ok)
            && error.is_none()
            && let Err(e) = Self::finish(text, sse, hits)
        {
            error = Some(e);
        }
        match (error, status) {
            (Some(e), _) => BodyStatus::Error(e),
            (None, DecodeStatus::Ok) => BodyStatus::Ok,
            (None, DecodeStatus::Bomb) => BodyStatus::Bomb,
            (None, DecodeStatus::Failed) => BodyStatus::Undecodable,
        }
    }

    /// Bytes of decoded body scanned so far (after gzip, br, …).
    pub fn decoded_bytes(&self) -> u64 {
        self.decoded
    }

    /// Ends the streams: the decoded text, then the SSE parser and its text.
    fn finish(
        text: &mut TextScanner,
        sse: &mut Option<(SseParser, TextScanner)>,
        hits: &mut Vec<Hit>,
    ) -> Result<(), Error> {
        text.finish(hits)?;
        if let Some((parser, content)) = sse.as_mut() {
            let mut err = None;
            parser.finish(&mut |t| {
                if err.is_none()
                    && let Err(e) = content.feed(t, hits)
                {
                    err = Some(e);
                }
            });
            if let Some(e) = err {
                return Err(e);
            }
            content.finish(hits)?;
        }
        Ok(())
    }
}
