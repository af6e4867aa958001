//! One sequence of the shared llama.cpp context, serving one generation: where its prompt
//! prefill stands, its sampler, and how its tokens become text events.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

use super::Job;
use super::sampling::sampler_for;
use super::stop::{StopMatcher, StopOutcome};
use super::utf8::Utf8Decoder;
use crate::{FinishReason, GenerationEvent};

/// What the batch loop should do with a slot after a step.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// Keep decoding.
    Running,
    /// Done (finished, failed or cancelled): clear its KV cache and free it.
    Done,
}

pub(crate) struct Slot {
    /// The llama.cpp sequence id; also the slot's index.
    pub seq: i32,
    events: Sender<GenerationEvent>,
    sampler: LlamaSampler,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// The sampled token to feed in the next decode, at position `pos`.
    next: Option<LlamaToken>,
    /// Tokens of this sequence in the KV cache = position of the next token fed.
    pos: i32,
    context_len: i32,
    max_tokens: u32,
    completion_tokens: u32,
    text: Utf8Decoder,
    stop: StopMatcher,
}

impl Slot {
    pub(crate) fn new(seq: i32, job: Job, context_len: u32) -> Self {
        let request = job.request;
        Self {
            seq,
            events: job.events,
            sampler: sampler_for(request.temperature, request.top_p, request.seed),
            prompt: job.prompt,
            prefilled: 0,
            next: None,
            pos: 0,
            context_len: i32::try_from(context_len).unwrap_or(i32::MAX),
            max_tokens: request.max_tokens,
            completion_tokens: 0,
            text: Utf8Decoder::default(),
            stop: StopMatcher::new(&request.stop),
        }
    }

    /// The client dropped its receiver: the generation is cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.events.is_closed()
    }

    /// The token to decode this step with its position, if the slot is past its prompt.
    pub(crate) fn decode_token(&self) -> Option<(LlamaToken, i32)> {
        self.next.map(|token| (token, self.pos))
    }

    /// Prompt tokens still to prefill, with the position of the first.
    pub(crate) fn remaining_prompt(&self) -> (&[LlamaToken], i32) {
        (&self.prompt[self.prefilled..], self.pos)
    }

    /// Records that the batch carried `n` more prompt tokens. Returns whether the prompt is
    /// now complete (its last token's logits give the first completion token).
    pub(crate) fn prefilled(&mut self, n: usize) -> bool {
        self.prefilled += n;
        self.pos += i32::try_from(n).unwrap_or(i32::MAX);
        self.prefilled == self.prompt.len()
    }

    /// Records that the batch carried `next`.
    pub(crate) fn fed_next(&mut self) {
        self.next = None;
        self.pos += 1;
    }

    pub(crate) fn sampler(&mut self) -> &mut LlamaSampler {
        &mut self.sampler
    }

    /// Handles a freshly sampled token: ends on end-of-generation, else emits its text and
    /// checks stop strings, `max_tokens` and the context limit.
    pub(crate) fn accept(&mut self, token: LlamaToken, model: &LlamaModel) -> SlotState {
        let vocab = model.vocab();
        if vocab.is_eog(token) {
            let rest = self.flush();
            return self.finish(FinishReason::Stop, rest);
        }
        self.completion_tokens += 1;
        // Special tokens render as nothing (llama.cpp server's default).
        let piece = self.text.push(&vocab.token_to_piece(token, false, None));
        match self.stop.push(&piece) {
            // What follows the stop string (held bytes included) is dropped.
            StopOutcome::Stopped(before) => self.finish(FinishReason::Stop, before),
            StopOutcome::Continue(mut text) => {
                if self.completion_tokens >= self.max_tokens || self.pos >= self.context_len {
                    // `pos` tokens are cached; the next one would not fit in the sequence.
                    text.push_str(&self.flush());
                    return self.finish(FinishReason::Length, text);
                }
                self.next = Some(token);
                self.send_text(text)
            }
        }
    }

    /// Sends `Failed`; the slot is done either way.
    pub(crate) fn fail(&mut self, message: &str) {
        let _ = self.events.try_send(GenerationEvent::Failed(message.to_owned()));
    }

    /// Generation ends for a reason other than a stop string: text held back as a possible
    /// stop string, and bytes of an incomplete character, were ordinary output after all.
    fn flush(&mut self) -> String {
        let tail = self.text.finish();
        match self.stop.push(&tail) {
            StopOutcome::Continue(text) | StopOutcome::Stopped(text) => text + &self.stop.finish(),
        }
    }

    /// Sends the last text and `Finished`.
    fn finish(&mut self, reason: FinishReason, text: String) -> SlotState {
        let _ = self.send_text(text);
        let _ = self.send(GenerationEvent::Finished { reason, completion_tokens: self.completion_tokens });
        SlotState::Done
    }

    fn send_text(&mut self, text: String) -> SlotState {
        if text.is_empty() { SlotState::Running } else { self.send(GenerationEvent::Text(text)) }
    }

    /// Never blocks: the channel holds one event per possible token plus the final ones
    /// (see `event_capacity`), so it is never full. Closed means the client went away.
    fn send(&mut self, event: GenerationEvent) -> SlotState {
        match self.events.try_send(event) {
            Ok(()) => SlotState::Running,
            Err(TrySendError::Closed(_)) => SlotState::Done,
            Err(TrySendError::Full(_)) => {
                tracing::error!(seq = self.seq, "generation event channel full; ending the generation");
                SlotState::Done
            }
        }
    }
}

/// Capacity of a generation's event channel: at most one `Text` per completion token, plus a
/// final `Text` and `Finished`. Sized so the engine thread never waits on one slow reader
/// (which would stall every sequence in the batch); memory stays bounded by the text itself.
pub(crate) fn event_capacity(max_tokens: u32, context_len: u32) -> usize {
    usize::try_from(max_tokens.min(context_len)).unwrap_or(usize::MAX / 16).saturating_add(2)
}
