//! The client of an OpenAI-compatible upstream on loopback: vLLM on GPUs (started and
//! supervised by `supervisor.rs`), or any server given by `--upstream-url`. It posts the
//! bytes it is given and hands back the answer as it comes, whole or as server-sent events,
//! each with what the worker reads of it (usage and generated text, for the audit); what
//! the client is sent is the serve layer's business.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::Deserialize;

pub struct Upstream {
    pub client: reqwest::Client,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Chat,
    Completions,
    Embeddings,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Route::Chat => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::Embeddings => "/v1/embeddings",
        }
    }
}

/// The request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the model server did not answer in time")]
    TimedOut,
    /// reqwest's message, without the loopback URL.
    #[error("{0}")]
    Failed(String),
}

/// The answer's body broke off; reqwest's message, without the loopback URL.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(String);

/// The upstream's answer: its status, then its body (read whole or as events).
pub struct Answer(reqwest::Response);

/// What the worker reads of an upstream body (a whole answer or one stream event): usage
/// and the generated text. Anything it cannot read is empty, never an error.
#[derive(Deserialize, Default)]
pub struct Observed {
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub choices: Vec<ObservedChoice>,
}

#[derive(Deserialize, Default, Clone, Copy)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u32,
    #[serde(default)]
    pub completion_tokens: u32,
}

#[derive(Deserialize, Default)]
pub struct ObservedChoice {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    message: Option<ObservedText>,
    #[serde(default)]
    delta: Option<ObservedText>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct ObservedText {
    #[serde(default)]
    content: Option<String>,
}

/// One server-sent event of a streamed answer, as the upstream sent it.
pub enum Event {
    /// A `data:` event with a JSON payload, and what the worker reads of it.
    Data { event: Bytes, observed: Observed },
    /// `data: [DONE]`: the answer is complete.
    Done,
    /// Any other event (comments, other fields).
    Other(Bytes),
}

impl Upstream {
    /// A client for `base` (`http://host:port`), which answers on loopback: no proxy, and
    /// enough idle connections for the requests served at once.
    pub fn new(base: &str) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(256).tcp_nodelay(true).build()?;
        Ok(Self { client, base: base.trim_end_matches('/').to_owned() })
    }

    /// Posts a JSON request body to `route`; `trace` is the request's span, whose context
    /// the upstream joins (vLLM reads `traceparent` when its tracing is on).
    pub async fn post(
        &self,
        route: Route,
        body: Bytes,
        trace: &tracing::Span,
        timeout: Duration,
    ) -> Result<Answer, SendError> {
        let request = self
            .client
            .post(format!("{}{}", self.base, route.path()))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .headers(taimatsu_telemetry::inject_context(trace))
            .timeout(timeout)
            .body(body);
        match request.send().await {
            Ok(response) => Ok(Answer(response)),
            Err(e) if e.is_timeout() => Err(SendError::TimedOut),
            Err(e) => Err(SendError::Failed(without_url(&e))),
        }
    }
}

impl Answer {
    pub fn status(&self) -> u16 {
        self.0.status().as_u16()
    }

    pub fn is_success(&self) -> bool {
        self.0.status().is_success()
    }

    pub async fn body(self) -> Result<Bytes, BodyError> {
        self.0.bytes().await.map_err(|e| BodyError(without_url(&e)))
    }

    /// The body as server-sent events, as they arrive. It ends after `Done`, or with the
    /// first error; dropping it stops reading the answer.
    pub fn events(self) -> impl Stream<Item = Result<Event, BodyError>> + Send + 'static {
        async_stream::stream! {
            let mut body = self.0.bytes_stream();
            let mut buf = BytesMut::new();
            while let Some(piece) = body.next().await {
                match piece {
                    Ok(piece) => buf.extend_from_slice(&piece),
                    Err(e) => {
                        yield Err(BodyError(without_url(&e)));
                        return;
                    }
                }
                while let Some(event) = next_event(&mut buf) {
                    let Some(data) = event_data(&event) else {
                        if event.windows(6).any(|w| w == b"[DONE]") {
                            yield Ok(Event::Done);
                            return;
                        }
                        yield Ok(Event::Other(event));
                        continue;
                    };
                    let observed = Observed::read(data);
                    yield Ok(Event::Data { event, observed });
                }
            }
        }
    }
}

impl Observed {
    pub fn read(json: &[u8]) -> Self {
        serde_json::from_slice(json).unwrap_or_default()
    }
}

impl ObservedChoice {
    /// The generated text: `text` (completions), `message` (chat) or `delta` (chat stream).
    pub fn text(&self) -> Option<&str> {
        self.text
            .as_deref()
            .or_else(|| self.message.as_ref().and_then(|m| m.content.as_deref()))
            .or_else(|| self.delta.as_ref().and_then(|m| m.content.as_deref()))
    }
}

/// reqwest errors print the URL; the loopback address means nothing to a client.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(&format!(" for url ({url})"), "");
    }
    msg
}

/// Splits off complete SSE events (terminated by a blank line) from `buf`.
fn next_event(buf: &mut BytesMut) -> Option<Bytes> {
    let end = buf.windows(2).position(|w| w == b"\n\n")?;
    Some(buf.split_to(end + 2).freeze())
}

/// The JSON payload of a `data:` event, or None for `[DONE]`, comments and other fields.
fn event_data(event: &[u8]) -> Option<&[u8]> {
    let line = event.split(|b| *b == b'\n').find(|l| l.starts_with(b"data:"))?;
    let data = line[5..].strip_prefix(b" ").unwrap_or(&line[5..]);
    let data = data.strip_suffix(b"\r").unwrap_or(data);
    (data != b"[DONE]").then_some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_across_pieces() {
        let mut buf = BytesMut::from(&b"data: {\"a\":1}\n\ndata: {\"b\""[..]);
        assert_eq!(next_event(&mut buf).as_deref(), Some(&b"data: {\"a\":1}\n\n"[..]));
        assert_eq!(next_event(&mut buf), None);
        buf.extend_from_slice(b":2}\n\ndata: [DONE]\n\n");
        let second = next_event(&mut buf).unwrap();
        assert_eq!(event_data(&second), Some(&b"{\"b\":2}"[..]));
        assert_eq!(event_data(&next_event(&mut buf).unwrap()), None);
    }
}
