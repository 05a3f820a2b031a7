//! Integration tests of the simulator (one binary; modules in tests/it/).

#[path = "it/api.rs"]
mod api;
#[path = "it/calibration.rs"]
mod calibration;
#[path = "it/common.rs"]
mod common;
#[path = "it/memory.rs"]
mod memory;
#[path = "it/requests.rs"]
mod requests;
#[path = "it/timing.rs"]
mod timing;
