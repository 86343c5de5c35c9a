//! Integration tests of the runtime crate (one binary, see STYLE.md).

mod db_tls;
mod pipelined;
mod tls;
