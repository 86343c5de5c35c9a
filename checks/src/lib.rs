//! Nothing but tests (`tests/it`): the crate boundaries of the workspace,
//! read from `cargo metadata`, and the size rules of docs/ARCHITECTURE.md.
