//! Request fields the simulator checks itself, before `wire` parses the rest of the body.
//!
//! vLLM parses bodies with pydantic in lax mode and checks sampling values in
//! `SamplingParams._verify_args` (`vllm/sampling_params.py`). Two things follow that `wire`'s
//! loose types (an `i64` that must fit a `u32`) cannot express: an integer field accepts a
//! whole float (`5.0`, but not `5.5`), and an integer of any size is still an integer, so a
//! huge `max_tokens` reaches the context-length check instead of being misreported as too
//! small. The fields handled here are taken out of the body, so `wire` only ever sees the ones
//! it checks itself (types of `messages`, `prompt`, `stream`, `temperature`, `top_p`, …).

use serde_json::{Map, Value};
use wire::openai::FieldError;

/// Which endpoint a body is for (`max_completion_tokens` is a chat field only).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Completion,
}

/// The fields checked here, with vLLM's defaults applied.
pub(crate) struct Fields {
    /// `max_completion_tokens` when given, else `max_tokens`; `None` when neither was. Both are
    /// at least 1; the upper bound is the context-length check's business.
    pub max_tokens: Option<u128>,
    pub n: u32,
    pub seed: Option<i64>,
    /// `stream_options` as sent; read with [`usage_flags`] once `wire` has checked its types.
    pub stream_options: Option<Value>,
    /// The simulator's `mock_output_text` extension.
    pub mock_output_text: Option<String>,
}

impl Default for Fields {
    fn default() -> Self {
        Self {
            max_tokens: None,
            n: 1,
            seed: None,
            stream_options: None,
            mock_output_text: None,
        }
    }
}

/// Checks and removes this module's fields from `body`. A body that is not a JSON object is
/// left alone for `wire` to refuse with its usual message.
pub(crate) fn take_fields(
    body: &mut Value,
    endpoint: Endpoint,
    max_num_seqs: u32,
) -> Result<Fields, FieldError> {
    let Some(obj) = body.as_object_mut() else {
        return Ok(Fields::default());
    };
    // vLLM checks this in a `mode="before"` validator, ahead of every field, on the raw
    // values and with Python truthiness: `{}` or `null` options pass, as does any truthy
    // `stream` (whose type is checked later).
    if obj.get("stream_options").is_some_and(truthy) && !obj.get("stream").is_some_and(truthy) {
        return Err(FieldError::new(
            "stream_options",
            "Stream options can only be defined when `stream=True`.",
        ));
    }
    let max_tokens = tokens_field(obj, "max_tokens")?;
    // Both are checked when both are given: a bad `max_tokens` is not excused by a good
    // `max_completion_tokens`.
    let max_completion_tokens = match endpoint {
        Endpoint::Chat => tokens_field(obj, "max_completion_tokens")?,
        Endpoint::Completion => None,
    };
    let n = match whole("n", obj.remove("n"))? {
        None => 1,
        Some(n) if n < 1 => {
            return Err(FieldError::new(
                "n",
                format!("n must be at least 1, got {n}."),
            ));
        }
        Some(n) if n > i128::from(max_num_seqs) => {
            return Err(FieldError::new(
                "n",
                format!(
                    "n must be at most {max_num_seqs}, got {n}. The {n} choices of one request \
                     could never run together: this engine runs at most max_num_seqs = \
                     {max_num_seqs} sequences at once."
                ),
            ));
        }
        // In range by the arm above.
        Some(n) => u32::try_from(n).unwrap_or(max_num_seqs),
    };
    for field in ["presence_penalty", "frequency_penalty"] {
        if let Some(v) = number(field, obj.get(field))?
            && !(-2.0..=2.0).contains(&v)
        {
            return Err(FieldError::new(
                field,
                format!("{field} must be in [-2, 2], got {}.", py_float(v)),
            ));
        }
    }
    // -1 is vLLM's old spelling of "disabled", still accepted; 0 is the new one.
    if let Some(k) = whole("top_k", obj.get("top_k").cloned())?
        && k < -1
    {
        return Err(FieldError::new(
            "top_k",
            format!("top_k must be 0 (disable), or at least 1, got {k}."),
        ));
    }
    let seed = match whole("seed", obj.remove("seed"))? {
        None => None,
        Some(v) => Some(i64::try_from(v).map_err(|_| {
            FieldError::new(
                "seed",
                format!("seed must be in [{}, {}], got {v}.", i64::MIN, i64::MAX),
            )
        })?),
    };
    let mock_output_text = match obj.remove("mock_output_text") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            return Err(FieldError::new(
                "mock_output_text",
                format!(
                    "Invalid value for 'mock_output_text': expected a string, got {}",
                    kind(&other)
                ),
            ));
        }
    };
    Ok(Fields {
        max_tokens: max_completion_tokens.or(max_tokens),
        n,
        seed,
        stream_options: obj.get("stream_options").cloned(),
        mock_output_text,
    })
}

/// `(include_usage, continuous_usage)` of a request, from `stream_options` as vLLM reads it
/// (`StreamOptions` in `vllm/entrypoints/openai/protocol.py`): present options default to
/// `include_usage: true` (an explicit `null` is falsy), and continuous usage stats apply
/// only together with `include_usage` (`serving_chat.py`, `serving_completion.py`).
pub(crate) fn usage_flags(stream: bool, stream_options: Option<&Value>) -> (bool, bool) {
    let Some(Value::Object(o)) = stream_options.filter(|_| stream) else {
        return (false, false);
    };
    let include = o
        .get("include_usage")
        .is_none_or(|v| v.as_bool().unwrap_or(false));
    let continuous = include
        && o.get("continuous_usage_stats")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    (include, continuous)
}

/// A token count field: a whole number of at least 1, or absent/null.
fn tokens_field(obj: &mut Map<String, Value>, field: &str) -> Result<Option<u128>, FieldError> {
    match whole(field, obj.remove(field))? {
        None => Ok(None),
        Some(v) => u128::try_from(v)
            .ok()
            .filter(|v| *v >= 1)
            .map(Some)
            .ok_or_else(|| FieldError::new(field, format!("{field} must be at least 1, got {v}."))),
    }
}

/// An integer field as pydantic's lax mode takes it: any JSON integer, or a float with no
/// fractional part. Floats beyond ±1.7e38 saturate, which keeps them far past every limit.
fn whole(field: &str, v: Option<Value>) -> Result<Option<i128>, FieldError> {
    let n = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n,
        Some(other) => {
            return Err(FieldError::new(
                field,
                format!(
                    "Invalid value for '{field}': expected an integer, got {}",
                    kind(&other)
                ),
            ));
        }
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i128::from(i)));
    }
    if let Some(u) = n.as_u64() {
        return Ok(Some(i128::from(u)));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f.fract() == 0.0 => Ok(Some(f as i128)),
        _ => Err(FieldError::new(
            field,
            format!(
                "Invalid value for '{field}': expected an integer, got {n} (a number with a \
                 fractional part)"
            ),
        )),
    }
}

/// A float field: any JSON number, or absent/null.
fn number(field: &str, v: Option<&Value>) -> Result<Option<f64>, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(FieldError::new(
            field,
            format!(
                "Invalid value for '{field}': expected a number, got {}",
                kind(other)
            ),
        )),
    }
}

/// Python's truthiness of a JSON value (what `data.get(...)` tests in a pydantic validator).
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A float as Python prints it in vLLM's messages (`3.0`, not `3`).
fn py_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(body: &str) -> Result<Fields, FieldError> {
        let mut v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        take_fields(&mut v, Endpoint::Chat, 256)
    }

    #[test]
    fn whole_floats_are_integers_and_fractions_are_not() {
        let f = take(r#"{"max_tokens":5.0,"n":2.0,"seed":7.0}"#);
        assert_eq!(
            f.map(|f| (f.max_tokens, f.n, f.seed)).ok(),
            Some((Some(5), 2, Some(7)))
        );
        for (body, field) in [
            (r#"{"max_tokens":5.5}"#, "max_tokens"),
            (r#"{"n":1.5}"#, "n"),
            (r#"{"top_k":2.5}"#, "top_k"),
            (r#"{"max_completion_tokens":"5"}"#, "max_completion_tokens"),
        ] {
            let e = take(body).err().and_then(|e| e.param);
            assert_eq!(e.as_deref(), Some(field), "{body}");
        }
    }

    #[test]
    fn usage_flags_follow_vllms_stream_options_defaults() {
        let f = |s: &str| {
            let v: Value = serde_json::from_str(s).unwrap_or(Value::Null);
            usage_flags(true, Some(&v))
        };
        assert_eq!(f("{}"), (true, false));
        assert_eq!(f(r#"{"include_usage":null}"#), (false, false));
        assert_eq!(f(r#"{"continuous_usage_stats":true}"#), (true, true));
        assert_eq!(
            f(r#"{"include_usage":false,"continuous_usage_stats":true}"#),
            (false, false)
        );
        assert_eq!(usage_flags(false, Some(&Value::Null)), (false, false));
    }
}
