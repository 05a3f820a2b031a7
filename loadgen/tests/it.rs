//! Integration tests of the load generator: its client against a fake upstream that replays
//! exact bytes at exact times, and its scheduling engine against small local servers.

#[path = "it/common.rs"]
mod common;

#[path = "it/replay_cases.rs"]
mod replay_cases;

#[path = "it/engine.rs"]
mod engine;

#[path = "it/channels.rs"]
mod channels;

#[path = "it/outcomes.rs"]
mod outcomes;

#[path = "it/scenario_cases.rs"]
mod scenario_cases;

#[path = "it/http1.rs"]
mod http1;
