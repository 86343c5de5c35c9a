//! The chaos ledger, short: 500 orders under every fault, on the debug
//! binaries that `cargo nextest run --workspace` builds (as e2e does; build
//! them first with `cargo build --bins` when running this crate alone).

use std::path::PathBuf;

use clap::Parser as _;
use ordermesh_chaos::{Args, run};

/// `target/<profile>`, where the binaries are, beside this test's `deps`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_nothing_twice_nothing_stuck_under_every_fault() {
    let dir = profile_dir();
    let out = dir.join("chaos-test");
    let args = Args::parse_from([
        "ordermesh-chaos",
        "--bin-dir",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--orders",
        "500",
        "--rate",
        "50",
        "--customers",
        "20",
        // Faster than `make chaos`, so each fault happens a few times in
        // the ~10 s of load.
        "--relay-kill-every",
        "2",
        "--broker-cut-every",
        "2.5",
        "--pg-terminate-every",
        "1.5",
        "--processor-abort-permille",
        "20",
        "--poison",
        "5",
        "--quiesce-seconds",
        "30",
        "--deadline-seconds",
        "60",
    ]);
    let ledger = run(args).await.expect("the chaos run");
    assert!(ledger.is_clean(), "{}", ledger.table());
    let figure = |what: &str| -> u64 {
        ledger
            .lines
            .iter()
            .find(|l| l.what.starts_with(what))
            .unwrap_or_else(|| panic!("no line {what:?}"))
            .actual
            .parse()
            .unwrap()
    };
    // Every fault really happened.
    assert!(figure("relay SIGKILLed") >= 1, "{}", ledger.table());
    assert!(figure("processor aborted") >= 1, "{}", ledger.table());
    assert!(
        figure("broker connections reset") >= 1,
        "{}",
        ledger.table()
    );
    assert!(
        figure("PostgreSQL backends terminated") >= 1,
        "{}",
        ledger.table()
    );
    assert_eq!(figure("poison messages published"), 5);
    // The binaries' logs are kept only when something failed.
    let _ = std::fs::remove_dir_all(&out);
}
