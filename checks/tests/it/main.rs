//! The workspace's shape, checked in `make test` (one binary, see STYLE.md).

mod boundaries;
mod sizes;

use std::path::{Path, PathBuf};

/// The workspace root (this crate is one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is inside the workspace")
        .to_path_buf()
}
