//! Integration tests of the router: real servers on 127.0.0.1:0 talking HTTP, with wiremock
//! and small scripted servers as upstream engines.

#[path = "it/common.rs"]
mod common;

#[path = "it/admission.rs"]
mod admission;
#[path = "it/audit_metrics.rs"]
mod audit_metrics;
#[path = "it/auth.rs"]
mod auth;
#[path = "it/config_files.rs"]
mod config_files;
#[path = "it/keys.rs"]
mod keys;
#[path = "it/ledger.rs"]
mod ledger;
#[path = "it/replicas.rs"]
mod replicas;
#[path = "it/requests.rs"]
mod requests;
#[path = "it/routing.rs"]
mod routing;
#[path = "it/services.rs"]
mod services;
#[path = "it/simulator.rs"]
mod simulator;
#[path = "it/streaming.rs"]
mod streaming;
