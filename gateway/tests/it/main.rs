//! Integration tests of the gateway crate (one binary, see STYLE.md).

mod connect;
mod fuzz;
mod rest;
mod rest_serve;
mod rest_support;
