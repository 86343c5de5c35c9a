//! End-to-end tests on the real binaries. Build them first
//! (`cargo build --bins`; `make test` does).

mod auth;
mod cancellation;
mod collector;
mod configuration;
mod dashboard;
mod handover;
mod hostile_trace;
mod mesh;
mod ops;
mod pipeline;
mod poison;
mod readiness;
mod rest;
mod shutdown;
mod telemetry;
