//! `ordermesh-bench`: runs the bench (see `lib.rs`); Ctrl-C stops it and
//! still tears the mesh down.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = ordermesh_bench::Args::parse();
    tokio::select! {
        result = ordermesh_bench::run(args) => result.map(|_| ()),
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    }
}
