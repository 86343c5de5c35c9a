//! Starting and stopping: health for the service and the server, and a
//! clean drain when shutdown is requested.

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_reports_serving_for_the_service_and_the_server() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in [processor_svc::GRPC_SERVICE, ""] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
}

#[tokio::test]
async fn shutdown_drains_and_run_returns_ok() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 100).await;
    app.stop().await.expect("run ends cleanly on shutdown");
}
