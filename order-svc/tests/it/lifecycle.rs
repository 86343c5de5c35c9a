//! Start and stop: the service drains and `run` returns Ok on shutdown.

use crate::helpers::{order_request, spawn_app};

#[tokio::test]
async fn run_returns_ok_after_shutdown() {
    let app = spawn_app().await;
    app.create(order_request("", "alice")).await.unwrap();
    app.stop().await.expect("clean shutdown");
}
