//! `ordermesh-chaos`: runs the chaos ledger (see `lib.rs`) and exits 1 when
//! any check fails. Ctrl-C stops it and still tears the mesh down.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = ordermesh_chaos::Args::parse();
    let ledger = tokio::select! {
        ledger = ordermesh_chaos::run(args) => ledger?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    };
    Ok(if ledger.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
