//! Integration tests of the platform crate (one binary, see STYLE.md).

mod inbox;
mod rest;
mod rest_serve;
mod rest_support;
