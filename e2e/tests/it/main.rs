//! End-to-end tests on the real binaries. Build them first
//! (`cargo build --bins`; `make test` does).

mod mesh;
mod pipeline;
mod shutdown;
