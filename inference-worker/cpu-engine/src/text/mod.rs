//! GGUF text generation on llama.cpp.
//!
//! The model is shared: the caller's threads use it read-only to tokenize and render chat
//! templates, while one engine thread owns the only llama.cpp context and runs the batch loop
//! (`batch_loop`). Requests reach that thread over a channel as `Job`s.

mod backend;
mod batch_loop;
mod sampling;
mod settings;
mod slot;
mod stop;
mod template;
mod utf8;

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;

use crate::guard::no_panic;
use crate::{
    ChatMessage, EngineConfig, EngineError, FinishReason, GenerateRequest, Generation, GenerationEvent, ModelInfo,
};
use settings::Settings;

/// A generation handed to the engine thread.
pub(crate) struct Job {
    /// The tokenized prompt (never empty, shorter than the context).
    prompt: Vec<LlamaToken>,
    request: GenerateRequest,
    events: tokio::sync::mpsc::Sender<GenerationEvent>,
}

pub(crate) struct TextEngineInner {
    model: Arc<LlamaModel>,
    template: Option<LlamaChatTemplate>,
    info: ModelInfo,
    jobs: mpsc::Sender<Job>,
}

impl TextEngineInner {
    pub(crate) fn load(config: EngineConfig) -> Result<Self, EngineError> {
        let path = config.model_path.clone();
        let fail = |reason: String| EngineError::Load { path: path.clone(), reason };
        // llama-cpp-2 debug-asserts that the file exists; say so properly instead.
        if !Path::new(&path).is_file() {
            return Err(fail("no such file".to_owned()));
        }
        let backend = backend::backend().map_err(&fail)?;
        let model = no_panic(|| LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default()))
            .map_err(&fail)?
            .map_err(|err| {
                fail(format!("llama.cpp could not load it as a GGUF model ({err}); see the llama-cpp-2 log"))
            })?;
        let model = Arc::new(model);
        let settings = Settings::resolve(&config, &model).map_err(&fail)?;
        let template = template::model_template(&model).map_err(&fail)?;
        let info = ModelInfo {
            architecture: model.meta_val_str("general.architecture").unwrap_or_else(|_| "unknown".to_owned()),
            context_len: settings.context_len,
            has_chat_template: template.is_some(),
        };

        let (jobs, job_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_model = Arc::clone(&model);
        std::thread::Builder::new()
            .name("taimatsu-llama".to_owned())
            .spawn(move || batch_loop::run(thread_model, settings, job_rx, ready_tx))
            .map_err(|err| fail(format!("cannot start the engine thread: {err}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(fail(reason)),
            Err(_) => return Err(fail("the engine thread exited while starting".to_owned())),
        }
        tracing::info!(
            path = %path.display(),
            architecture = %info.architecture,
            context_len = settings.context_len,
            parallel = settings.parallel,
            threads = settings.threads,
            "text model loaded"
        );
        Ok(Self { model, template, info, jobs })
    }

    pub(crate) fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub(crate) fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        template::render(&self.model, self.template.as_ref(), messages)
    }

    pub(crate) fn count_tokens(&self, text: &str) -> Result<u32, EngineError> {
        let tokens = self.tokenize(text, false)?;
        Ok(u32::try_from(tokens.len()).unwrap_or(u32::MAX))
    }

    /// Tokenizes like llama.cpp's server: special tokens written in the text (`<|im_start|>`
    /// from a chat template) are parsed as such, and with `add_special` the model's metadata
    /// (`tokenizer.ggml.add_bos_token`) decides whether a BOS goes first. SmolLM2 says no.
    fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<LlamaToken>, EngineError> {
        no_panic(|| self.model.vocab().tokenize(text.as_bytes(), add_special, true))
            .map_err(|panic| EngineError::InvalidRequest(format!("cannot tokenize the text: {panic}")))
    }

    pub(crate) fn generate(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        sampling::validate(request.temperature, request.top_p).map_err(EngineError::InvalidRequest)?;
        let prompt = self.tokenize(&request.prompt, true)?;
        let prompt_tokens = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        let context_len = self.info.context_len;
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".to_owned()));
        }
        if prompt_tokens >= context_len {
            return Err(EngineError::PromptTooLong { prompt_tokens, context_len });
        }
        let (events, receiver) = tokio::sync::mpsc::channel(slot::event_capacity(request.max_tokens, context_len));
        if request.max_tokens == 0 {
            let _ = events.try_send(GenerationEvent::Finished { reason: FinishReason::Length, completion_tokens: 0 });
            return Ok(Generation { prompt_tokens, events: receiver });
        }
        self.jobs
            .send(Job { prompt, request, events })
            .map_err(|_| EngineError::Stopped("the engine thread has exited".to_owned()))?;
        Ok(Generation { prompt_tokens, events: receiver })
    }
}
