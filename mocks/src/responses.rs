//! Response bodies laid out as vLLM's OpenAI server serialises them (field order and nulls
//! included; `vllm/entrypoints/openai/protocol.py`). Stream chunks are written the way vLLM
//! writes them (`exclude_unset`): only the fields it sets.

use serde::Serialize;
use wire::openai::Usage;

#[derive(Serialize)]
pub(crate) struct ChatChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChatChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Serialize)]
pub(crate) struct ChatChunkChoice<'a> {
    pub index: u32,
    pub delta: ChatDelta<'a>,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
    /// Only in the final chunk of a choice (vLLM sets it there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<Option<()>>,
}

#[derive(Serialize)]
pub(crate) struct ChatDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    pub content: &'a str,
}

#[derive(Serialize)]
pub(crate) struct CompletionChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<CompletionChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Serialize)]
pub(crate) struct CompletionChunkChoice<'a> {
    pub index: u32,
    pub text: &'a str,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
    pub stop_reason: Option<()>,
}

#[derive(Serialize)]
pub(crate) struct UsageFull {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
    pub completion_tokens: u64,
    pub prompt_tokens_details: Option<()>,
}

impl From<Usage> for UsageFull {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            total_tokens: u.total_tokens,
            completion_tokens: u.completion_tokens,
            prompt_tokens_details: None,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct ChatResponse<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChatChoice>,
    pub service_tier: Option<()>,
    pub system_fingerprint: Option<()>,
    pub usage: UsageFull,
    pub prompt_logprobs: Option<()>,
    pub kv_transfer_params: Option<()>,
}

#[derive(Serialize)]
pub(crate) struct ChatChoice {
    pub index: u32,
    pub message: ChatMessageOut,
    pub logprobs: Option<()>,
    pub finish_reason: &'static str,
    pub stop_reason: Option<()>,
}

#[derive(Serialize)]
pub(crate) struct ChatMessageOut {
    pub role: &'static str,
    pub content: String,
    pub refusal: Option<()>,
    pub annotations: Option<()>,
    pub audio: Option<()>,
    pub function_call: Option<()>,
    pub tool_calls: [(); 0],
    pub reasoning_content: Option<()>,
}

#[derive(Serialize)]
pub(crate) struct CompletionResponse<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<CompletionChoice>,
    pub usage: UsageFull,
    pub kv_transfer_params: Option<()>,
}

#[derive(Serialize)]
pub(crate) struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<()>,
    pub finish_reason: &'static str,
    pub stop_reason: Option<()>,
    pub prompt_logprobs: Option<()>,
}

#[derive(Serialize)]
pub(crate) struct ModelPermission {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub allow_create_engine: bool,
    pub allow_sampling: bool,
    pub allow_logprobs: bool,
    pub allow_search_indices: bool,
    pub allow_view: bool,
    pub allow_fine_tuning: bool,
    pub organization: &'static str,
    pub group: Option<()>,
    pub is_blocking: bool,
}

#[derive(Serialize)]
pub(crate) struct ModelCardOut {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub root: String,
    pub parent: Option<String>,
    pub max_model_len: Option<u32>,
    pub permission: Vec<ModelPermission>,
}

#[derive(Serialize)]
pub(crate) struct ModelListOut {
    pub object: &'static str,
    pub data: Vec<ModelCardOut>,
}
