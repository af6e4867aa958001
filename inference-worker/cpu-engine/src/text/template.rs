//! Chat prompts from the template in the GGUF metadata, rendered by llama.cpp's built-in
//! template engine (`llama_chat_apply_template`), which recognises the common families
//! (ChatML, Llama 2/3, Gemma, Qwen, Phi, Mistral, …) from the Jinja source in the file.

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::{ApplyChatTemplateError, ChatTemplateError};

use crate::guard::no_panic;
use crate::{ChatMessage, EngineError};

/// The model's default chat template, or `None` when the GGUF carries none.
pub(crate) fn model_template(model: &LlamaModel) -> Result<Option<LlamaChatTemplate>, String> {
    match model.chat_template(None) {
        Ok(template) => Ok(Some(template)),
        Err(ChatTemplateError::MissingTemplate) => Ok(None),
        Err(err) => Err(format!("unreadable chat template: {err}")),
    }
}

/// Renders `messages`, ending with the assistant turn's opening (`add_ass`).
pub(crate) fn render(
    model: &LlamaModel,
    template: Option<&LlamaChatTemplate>,
    messages: &[ChatMessage],
) -> Result<String, EngineError> {
    let template = template.ok_or_else(|| {
        EngineError::Template(
            "the model has no chat template in its GGUF metadata (tokenizer.chat_template); \
             send a plain prompt instead"
                .to_owned(),
        )
    })?;
    let chat = messages
        .iter()
        .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| EngineError::Template("a message contains a NUL character".to_owned()))?;
    let rendered = no_panic(|| model.apply_chat_template(template, &chat, true))
        .map_err(|panic| EngineError::Template(format!("rendering failed: {panic}")))?;
    rendered.map_err(|err| match err {
        ApplyChatTemplateError::FfiError(_) => EngineError::Template(
            "llama.cpp does not support this model's chat template (it knows ChatML, Llama 2/3, \
             Gemma, Qwen, Phi, Mistral and similar families)"
                .to_owned(),
        ),
        other => EngineError::Template(other.to_string()),
    })
}
