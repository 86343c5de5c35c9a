//! Integration tests of the platform crate (one binary, see STYLE.md).

mod connect;
mod db_tls;
mod fuzz;
mod inbox;
mod jwks;
mod redelivery;
mod rest;
mod rest_serve;
mod rest_support;
mod tls;
