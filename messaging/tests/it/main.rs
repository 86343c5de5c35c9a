//! Integration tests of the messaging crate (one binary, see STYLE.md).

mod classify;
mod inbox;
mod redelivery;
