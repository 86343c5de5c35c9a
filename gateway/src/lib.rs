//! The browser and HTTP faces of a tonic server, built at run time from a
//! `FileDescriptorSet`: REST/JSON transcoded from the `google.api.http`
//! annotations with its OpenAPI document and docs page ([`rest`]), the
//! Connect protocol ([`connect`]) and CORS from an allow-list ([`cors`]).
//!
//! Nothing in it is particular to one application: any tonic router with a
//! descriptor set can be put behind it.

pub mod connect;
pub mod cors;
pub mod rest;

/// REST/JSON (with `/openapi.json` and `/docs`) and Connect for the
/// services of `descriptor_set` that `grpc` serves, on one router: REST as
/// `grpc`'s fallback, Connect in front (its paths are the gRPC ones). The
/// descriptor set is decoded, and the router asked which services it
/// serves, once for both.
pub async fn attach(
    grpc: axum::Router,
    descriptor_set: &[u8],
    config: rest::RestConfig,
) -> Result<axum::Router, rest::BuildError> {
    let pool = rest::descriptor_pool(descriptor_set)?;
    let services = rest::served_services(&pool, &grpc).await;
    let max_body_bytes = config.max_body_bytes;
    let gateway = rest::Gateway::new(pool.clone(), &services, grpc.clone(), config)?;
    tracing::info!(
        services = ?services,
        routes = gateway.bindings().len(),
        "REST and Connect ready"
    );
    let app = gateway.attach(grpc.clone());
    Ok(connect::Connect::new(pool, &services, grpc, max_body_bytes).wrap(app))
}
