//! The load generator: scenario files → per-tenant arrival schedules → an HTTP/SSE client →
//! one record per request → `reports`.
//!
//! - [`scenario`] parses and validates scenario files (two stages; errors name file and field);
//! - [`distribution`] samples arrival gaps and token lengths;
//! - [`schedule`] merges every tenant's arrivals into one time-ordered, seeded plan;
//! - [`prompt`] synthesises prompts of an exact token count;
//! - [`client`] sends one streaming request and measures it from its intended send time;
//! - [`http1`] is the lean HTTP/1.1 client [`client`] uses for plain `http://` targets;
//! - [`stack`] brings up the embedded stack (simulated vLLM engines + the router);
//! - [`run`] ties these together; [`check`] validates without binding a port.

pub mod check;
pub mod client;
pub mod distribution;
pub mod error;
pub mod http1;
pub mod prompt;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod stack;

pub use error::{RunError, ScenarioError};
pub use run::{Driven, RunOptions, RunOutcome, Target, drive, run};
pub use scenario::{Scenario, load};
