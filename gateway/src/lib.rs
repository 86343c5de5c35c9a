//! The browser and HTTP faces of a tonic server, built at run time from a
//! `FileDescriptorSet`: REST/JSON transcoded from the `google.api.http`
//! annotations with its OpenAPI document and docs page ([`rest`]), the
//! Connect protocol ([`connect`]) and CORS from an allow-list ([`cors`]).
//!
//! Nothing in it is particular to one application: any tonic router with a
//! descriptor set can be put behind it.

pub mod connect;
pub mod cors;
pub mod rest;
