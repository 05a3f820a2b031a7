//! OpenAI-compatible request, response, stream-chunk and error bodies, as vLLM's server and
//! LiteLLM's proxy speak them.
//!
//! Requests are parsed in two stages: serde into loose types (unknown fields are accepted, as
//! vLLM and OpenAI accept them), then [`ChatRequest::validate`] / [`CompletionRequest::validate`]
//! into values that cannot be wrong, with an error that names the offending field.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A request field that is missing, of the wrong type or out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    /// The field, as a JSON path (`messages`, `messages[0].content`, `max_tokens`).
    pub param: Option<String>,
    pub message: String,
}

impl FieldError {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            message: message.into(),
        }
    }
}

/// Parses a JSON body into `T`, naming the field whose type is wrong.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| FieldError {
        param: None,
        message: format!("Request body is not valid JSON: {e}"),
    })?;
    parse_value(value)
}

/// Like [`parse_body`] for an already-parsed JSON value.
pub fn parse_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != "." && !path.is_empty()).then_some(path.clone());
        let inner = e.into_inner();
        FieldError {
            message: match &param {
                Some(p) => format!("Invalid value for '{p}': {inner}"),
                None => format!("Invalid request body: {inner}"),
            },
            param,
        }
    })
}

/// `stream_options` of a streaming request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous_usage_stats: Option<bool>,
}

/// Message content: a string or an array of typed parts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    /// The text of the message (parts joined), empty when there is none.
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(MessageContent::Text(t)) => t.clone(),
            Some(MessageContent::Parts(p)) => p
                .iter()
                .filter_map(|x| x.text.as_deref())
                .collect::<Vec<_>>()
                .join(""),
        }
    }
}

/// `POST /v1/chat/completions`, loosely typed.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    /// vLLM extension: generate until `max_tokens` regardless of end-of-sequence.
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    #[serde(default)]
    pub user: Option<String>,
}

/// A chat request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidChat {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// `max_completion_tokens` or `max_tokens`; `None` when the client left it to the server.
    pub max_tokens: Option<u32>,
    pub stream: bool,
    pub include_usage: bool,
    pub n: u32,
    pub seed: Option<i64>,
}

fn positive(field: &str, v: Option<i64>) -> Result<Option<u32>, FieldError> {
    match v {
        None => Ok(None),
        Some(x) if x >= 1 && x <= i64::from(u32::MAX) => Ok(Some(x as u32)),
        Some(x) => Err(FieldError::new(
            field,
            format!("'{field}' must be at least 1, got {x}"),
        )),
    }
}

fn check_sampling(temperature: Option<f64>, top_p: Option<f64>) -> Result<(), FieldError> {
    if let Some(t) = temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(FieldError::new(
            "temperature",
            format!("'temperature' must be in [0, 2], got {t}"),
        ));
    }
    if let Some(p) = top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(FieldError::new(
            "top_p",
            format!("'top_p' must be in (0, 1], got {p}"),
        ));
    }
    Ok(())
}

impl ChatRequest {
    pub fn validate(self) -> Result<ValidChat, FieldError> {
        let model = self
            .model
            .filter(|m| !m.is_empty())
            .ok_or_else(|| FieldError::new("model", "'model' is required"))?;
        let messages = self
            .messages
            .ok_or_else(|| FieldError::new("messages", "'messages' is required"))?;
        if messages.is_empty() {
            return Err(FieldError::new(
                "messages",
                "'messages' must contain at least one message",
            ));
        }
        let max_tokens = match positive("max_completion_tokens", self.max_completion_tokens)? {
            Some(v) => Some(v),
            None => positive("max_tokens", self.max_tokens)?,
        };
        let n = positive("n", self.n)?.unwrap_or(1);
        check_sampling(self.temperature, self.top_p)?;
        let stream = self.stream.unwrap_or(false);
        let include_usage = stream
            && self
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false);
        Ok(ValidChat {
            model,
            messages,
            max_tokens,
            stream,
            include_usage,
            n,
            seed: self.seed,
        })
    }
}

/// The `prompt` of a legacy completion: text, texts, token ids or batches of token ids.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatches(Vec<Vec<u32>>),
}

/// `POST /v1/completions`, loosely typed.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<Prompt>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub ignore_eos: Option<bool>,
}

/// A completion request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidCompletion {
    pub model: String,
    pub prompt: Prompt,
    /// OpenAI's default for legacy completions is 16 tokens.
    pub max_tokens: u32,
    pub stream: bool,
    pub include_usage: bool,
    pub n: u32,
    pub seed: Option<i64>,
}

/// OpenAI's default `max_tokens` for `/v1/completions`.
pub const COMPLETIONS_DEFAULT_MAX_TOKENS: u32 = 16;

impl CompletionRequest {
    pub fn validate(self) -> Result<ValidCompletion, FieldError> {
        let model = self
            .model
            .filter(|m| !m.is_empty())
            .ok_or_else(|| FieldError::new("model", "'model' is required"))?;
        let prompt = self
            .prompt
            .ok_or_else(|| FieldError::new("prompt", "'prompt' is required"))?;
        let empty = match &prompt {
            Prompt::Text(t) => t.is_empty(),
            Prompt::Texts(t) => t.is_empty(),
            Prompt::Tokens(t) => t.is_empty(),
            Prompt::TokenBatches(t) => t.is_empty(),
        };
        if empty {
            return Err(FieldError::new("prompt", "'prompt' must not be empty"));
        }
        let max_tokens =
            positive("max_tokens", self.max_tokens)?.unwrap_or(COMPLETIONS_DEFAULT_MAX_TOKENS);
        let n = positive("n", self.n)?.unwrap_or(1);
        check_sampling(self.temperature, self.top_p)?;
        let stream = self.stream.unwrap_or(false);
        let include_usage = stream
            && self
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false);
        Ok(ValidCompletion {
            model,
            prompt,
            max_tokens,
            stream,
            include_usage,
            n,
            seed: self.seed,
        })
    }
}

/// Token accounting of a response.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// The `delta` of a chat stream chunk.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// vLLM's reasoning channel (`--reasoning-parser`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The newer name of the reasoning channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
}

/// One choice of a stream chunk. Chat chunks carry `delta`; completion chunks carry `text`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChunkChoice {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<Value>,
}

/// One `data:` payload of a stream (`chat.completion.chunk` or `text_completion`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StreamChunk {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Set when the server reports an error inside a 200 stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

impl StreamChunk {
    /// Text generated in this chunk on any channel (content, reasoning, tool-call arguments),
    /// concatenated. Role-only and empty deltas give an empty string.
    pub fn generated_text(&self) -> String {
        let mut s = String::new();
        for c in &self.choices {
            if let Some(t) = &c.text {
                s.push_str(t);
            }
            if let Some(d) = &c.delta {
                for part in [&d.content, &d.reasoning_content, &d.reasoning]
                    .into_iter()
                    .flatten()
                {
                    s.push_str(part);
                }
                if let Some(Value::Array(calls)) = &d.tool_calls {
                    for call in calls {
                        if let Some(a) = call.pointer("/function/arguments").and_then(Value::as_str)
                        {
                            s.push_str(a);
                        }
                    }
                }
            }
        }
        s
    }

    /// Only the `content` (or completion `text`) channel of this chunk.
    pub fn content_text(&self) -> String {
        let mut s = String::new();
        for c in &self.choices {
            if let Some(t) = &c.text {
                s.push_str(t);
            }
            if let Some(t) = c.delta.as_ref().and_then(|d| d.content.as_ref()) {
                s.push_str(t);
            }
        }
        s
    }
}

/// A borrowed, partial view of one stream chunk: what the load generator and the router read
/// from every chunk (generated text per channel, usage, an error), with strings borrowed from
/// the event's text unless a JSON escape forces a copy. [`StreamChunk`] owns every field; at
/// tens of thousands of chunks a second that copying showed in profiles. Unknown fields are
/// skipped, and `choices`/`delta` may be absent.
#[derive(Debug, Deserialize)]
pub struct ChunkView<'a> {
    #[serde(default, borrow)]
    pub choices: Option<Vec<ChoiceView<'a>>>,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// An error reported inside a 200 stream (`{"error": {...}}`).
    #[serde(default)]
    pub error: Option<Value>,
    /// `"error"` in vLLM's older in-stream error shape (`{"object": "error", "message": ...}`).
    #[serde(default, borrow)]
    pub object: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
pub struct ChoiceView<'a> {
    /// A completion's text.
    #[serde(default, borrow)]
    pub text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub delta: Option<DeltaView<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct DeltaView<'a> {
    #[serde(default, borrow)]
    pub content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub reasoning: Option<Cow<'a, str>>,
    #[serde(default)]
    pub tool_calls: Option<Value>,
}

/// A text field that is present and not empty.
fn nonempty(s: &Option<Cow<'_, str>>) -> bool {
    s.as_deref().is_some_and(|s| !s.is_empty())
}

impl ChunkView<'_> {
    fn choices(&self) -> &[ChoiceView<'_>] {
        self.choices.as_deref().unwrap_or_default()
    }

    /// The stream reported an error in this chunk (either shape).
    pub fn is_error(&self) -> bool {
        self.error.as_ref().is_some_and(|e| !e.is_null()) || self.object.as_deref() == Some("error")
    }

    /// The error as text, for messages.
    pub fn error_text(&self) -> Option<String> {
        match &self.error {
            Some(e) if !e.is_null() => Some(e.to_string()),
            _ if self.object.as_deref() == Some("error") => Some("object \"error\"".to_owned()),
            _ => None,
        }
    }

    /// Appends the text generated in this chunk on any channel (completion text, content,
    /// reasoning, tool-call arguments) to `out`, as [`StreamChunk::generated_text`] returns it.
    pub fn generated_text(&self, out: &mut String) {
        for c in self.choices() {
            if let Some(t) = &c.text {
                out.push_str(t);
            }
            let Some(d) = &c.delta else { continue };
            for part in [&d.content, &d.reasoning_content, &d.reasoning]
                .into_iter()
                .flatten()
            {
                out.push_str(part);
            }
            if let Some(Value::Array(calls)) = &d.tool_calls {
                for call in calls {
                    if let Some(a) = call.pointer("/function/arguments").and_then(Value::as_str) {
                        out.push_str(a);
                    }
                }
            }
        }
    }

    /// Whether the content channel (or a completion's text) carries any text.
    pub fn has_content(&self) -> bool {
        self.choices()
            .iter()
            .any(|c| nonempty(&c.text) || c.delta.as_ref().is_some_and(|d| nonempty(&d.content)))
    }

    /// Whether any choice generated something: text on any channel or a tool call.
    pub fn generates(&self) -> bool {
        self.choices().iter().any(|c| {
            nonempty(&c.text)
                || c.delta.as_ref().is_some_and(|d| {
                    nonempty(&d.content)
                        || nonempty(&d.reasoning_content)
                        || nonempty(&d.reasoning)
                        || d.tool_calls.is_some()
                })
        })
    }

    /// A usage-only chunk: usage and no choices.
    pub fn is_usage_only(&self) -> bool {
        self.usage.is_some() && self.choices().is_empty()
    }
}

/// The body of an error response: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub param: Option<String>,
    /// vLLM puts the HTTP status here as a number; OpenAI puts a string code or null.
    #[serde(default)]
    pub code: Value,
}

impl ErrorBody {
    pub fn new(
        message: impl Into<String>,
        kind: impl Into<String>,
        param: Option<String>,
        code: Value,
    ) -> Self {
        Self {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.into(),
                param,
                code,
            },
        }
    }
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    #[serde(default)]
    pub root: Option<String>,
    /// The base model of a LoRA adapter; null for base models.
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u64>,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_type_names_the_field() {
        let e = parse_body::<ChatRequest>(br#"{"model":"m","messages":[],"temperature":"hot"}"#)
            .err()
            .map(|e| e.param);
        assert_eq!(e, Some(Some("temperature".to_string())));
    }

    #[test]
    fn invalid_json_is_reported() {
        let e = parse_body::<ChatRequest>(b"{not json").err();
        assert!(e.is_some_and(|e| e.message.contains("not valid JSON")));
    }

    #[test]
    fn null_max_tokens_is_unset_and_zero_is_rejected() {
        let ok = parse_body::<ChatRequest>(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":null}"#,
        )
        .and_then(ChatRequest::validate);
        assert_eq!(ok.map(|v| v.max_tokens), Ok(None));
        for bad in ["0", "-5"] {
            let body = format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"max_tokens":{bad}}}"#
            );
            let e = parse_body::<ChatRequest>(body.as_bytes())
                .and_then(ChatRequest::validate)
                .err();
            assert_eq!(e.and_then(|e| e.param), Some("max_tokens".into()));
        }
    }

    #[test]
    fn empty_or_missing_messages_and_zero_n_rejected() {
        for (body, field) in [
            (r#"{"model":"m","messages":[]}"#, "messages"),
            (r#"{"model":"m"}"#, "messages"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":0}"#,
                "n",
            ),
        ] {
            let e = parse_body::<ChatRequest>(body.as_bytes())
                .and_then(ChatRequest::validate)
                .err();
            assert_eq!(e.and_then(|e| e.param).as_deref(), Some(field), "{body}");
        }
    }

    #[test]
    fn generated_text_covers_every_channel_and_skips_role_only() {
        let role: StreamChunk = serde_json::from_str(
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
        )
        .unwrap_or_default();
        assert!(role.generated_text().is_empty());
        let reasoning: StreamChunk =
            serde_json::from_str(r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}"#)
                .unwrap_or_default();
        assert_eq!(reasoning.generated_text(), "hm");
        assert!(reasoning.content_text().is_empty());
        let tool: StreamChunk = serde_json::from_str(
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\""}}]}}]}"#,
        )
        .unwrap_or_default();
        assert_eq!(tool.generated_text(), "{\"a\"");
    }
}
