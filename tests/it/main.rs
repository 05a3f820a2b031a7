//! End-to-end tests of the `tenantbench` binary and of the embedded stack as a whole: real
//! servers on 127.0.0.1 ephemeral ports, real HTTP.

mod common;

mod agreement;
mod calibrate;
mod ci;
mod cli;
mod servers;
