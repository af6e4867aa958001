//! The engine thread: continuous batching over one llama.cpp context, as llama.cpp's own
//! server does it. Every iteration puts one token for each decoding sequence plus prompt
//! chunks of newly admitted sequences into a single batch, decodes it once (one pass over
//! the weights serves all sequences), then samples each sequence from its own logits row.
//! New jobs are admitted between iterations whenever a sequence is free; the rest wait in
//! the job channel.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvError, TryRecvError};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;

use super::Job;
use super::backend::backend;
use super::settings::Settings;
use super::slot::{Slot, SlotState};
use crate::guard::{no_panic, panic_message};

/// Runs on the engine thread until every `TextEngine` clone is gone and no generation is
/// left. `ready` reports whether the context could be created, so `load` can fail cleanly.
pub(crate) fn run(
    model: Arc<LlamaModel>,
    settings: Settings,
    jobs: Receiver<Job>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let context = backend().and_then(|backend| {
        model.new_context(backend, settings.context_params()).map_err(|err| format!("cannot create context: {err}"))
    });
    let mut engine = match context {
        Ok(ctx) => BatchLoop::new(&model, ctx, settings),
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);

    loop {
        if !engine.admit(&jobs) {
            return;
        }
        // A panic in one step fails the generations in flight, not the engine.
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.step())) {
            engine.reset(&format!("engine error: {}", panic_message(payload.as_ref())));
        }
    }
}

struct BatchLoop<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    /// Index = sequence id.
    slots: Vec<Option<Slot>>,
    settings: Settings,
}

impl<'m> BatchLoop<'m> {
    fn new(model: &'m LlamaModel, ctx: LlamaContext<'m>, settings: Settings) -> Self {
        let capacity = usize::try_from(settings.batch_tokens).unwrap_or(512);
        let slots = (0..settings.parallel).map(|_| None).collect();
        Self { model, ctx, batch: LlamaBatch::new(capacity, 1), slots, settings }
    }

    fn active(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Fills free sequences from the job channel, blocking only while nothing is running.
    /// Returns false when the engine should stop: no work and every sender dropped.
    fn admit(&mut self, jobs: &Receiver<Job>) -> bool {
        loop {
            let Some(free) = self.slots.iter().position(Option::is_none) else { return true };
            let job = if self.active() == 0 {
                match jobs.recv() {
                    Ok(job) => job,
                    Err(RecvError) => return false,
                }
            } else {
                match jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return true,
                }
            };
            // Cancelled while queued: never touches the context.
            if job.events.is_closed() {
                continue;
            }
            let seq = i32::try_from(free).unwrap_or(i32::MAX);
            self.slots[free] = Some(Slot::new(seq, job, self.settings.context_len));
        }
    }

    /// One decode over all running sequences.
    fn step(&mut self) {
        for seq in 0..self.slots.len() {
            if self.slots[seq].as_ref().is_some_and(Slot::is_cancelled) {
                self.release(seq);
            }
        }

        // Which batch row holds each sequence's logits this step.
        let mut sample_at: Vec<(usize, i32)> = Vec::with_capacity(self.slots.len());
        self.batch.clear();
        let budget = usize::try_from(self.settings.batch_tokens).unwrap_or(512);

        // Decoding sequences first: one token each, so a long prompt arriving never delays them
        // by more than one prefill chunk.
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            let Some((token, pos)) = slot.decode_token() else { continue };
            if self.batch.add(token, pos, &[slot.seq], true).is_err() {
                break;
            }
            slot.fed_next();
            sample_at.push((index, self.batch.n_tokens() - 1));
        }
        // Then prompt chunks, in sequence order, while the batch has room.
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            let used = usize::try_from(self.batch.n_tokens()).unwrap_or(budget);
            let room = budget.saturating_sub(used);
            let (prompt, start) = slot.remaining_prompt();
            if room == 0 || prompt.is_empty() {
                continue;
            }
            let take = prompt.len().min(room);
            let completes = take == prompt.len();
            let mut added = 0;
            for (offset, &token) in prompt[..take].iter().enumerate() {
                let last = completes && offset + 1 == take;
                let pos = start + i32::try_from(offset).unwrap_or(i32::MAX);
                if self.batch.add(token, pos, &[slot.seq], last).is_err() {
                    break;
                }
                added += 1;
            }
            if slot.prefilled(added) {
                sample_at.push((index, self.batch.n_tokens() - 1));
            }
        }
        if self.batch.n_tokens() == 0 {
            return;
        }

        if let Err(err) = self.ctx.decode(&mut self.batch) {
            // The sequences in this batch now have an unknown cache state: end them all.
            let message = format!("decode failed: {err}");
            for seq in 0..self.slots.len() {
                if let Some(slot) = self.slots[seq].as_mut() {
                    slot.fail(&message);
                    self.release(seq);
                }
            }
            return;
        }

        for (index, row) in sample_at {
            let Some(slot) = self.slots[index].as_mut() else { continue };
            let token = slot.sampler().sample(&self.ctx, row);
            if slot.accept(token, self.model) == SlotState::Done {
                self.release(index);
            }
        }
    }

    /// Frees a sequence: its KV cache entries go, so the next job starts from an empty cache.
    fn release(&mut self, seq: usize) {
        self.slots[seq] = None;
        let cleared = u32::try_from(seq).ok().map(|id| self.ctx.clear_kv_cache_seq(Some(id), None, None));
        if !matches!(cleared, Some(Ok(true))) {
            // Should not happen; clearing everything keeps later sequences correct anyway.
            tracing::warn!(seq, "could not clear one sequence's KV cache; clearing all");
            self.reset("KV cache error");
        }
    }

    /// Fails every running generation and empties the KV cache: used after a panic, when the
    /// state of the batch is unknown.
    fn reset(&mut self, message: &str) {
        for slot in self.slots.iter_mut() {
            if let Some(mut slot) = slot.take() {
                slot.fail(message);
            }
        }
        if let Err(err) = no_panic(|| self.ctx.clear_kv_cache()) {
            tracing::error!(%err, "clearing the KV cache failed");
        }
    }
}
