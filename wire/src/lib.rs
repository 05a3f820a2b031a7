//! Wire formats shared by the router, the vLLM simulator and the load generator.
//!
//! - [`openai`]: the OpenAI / vLLM request, response, chunk and error bodies, typed loosely enough
//!   to accept what real clients send and strictly enough to name the field that is wrong.
//! - [`sse`]: an incremental Server-Sent Events codec over raw bytes. The router forwards the
//!   exact bytes it parsed, and the load generator timestamps each event as it completes, so a
//!   byte-level parser serves both better than a decoded-text stream would.
//! - [`pacer`]: waits for an instant within microseconds instead of tokio's 1 ms timer tick, so
//!   neither a scheduled send nor a simulated token is late by a tick.
//! - [`tokens`]: the token counter (OpenAI's `cl100k_base` BPE) and the vocabulary the simulator
//!   and the prompt synthesiser draw from, so that every part of the embedded stack counts alike.

pub mod openai;
pub mod pacer;
pub mod sse;
pub mod tokens;
