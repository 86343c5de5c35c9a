//! Integration tests of the auth crate (one binary, see STYLE.md).

mod jwks;
