//! Prints the AsyncAPI document the relay serves at `/asyncapi.json`, for
//! the default exchange or the one named by the first argument:
//! `cargo run -q -p relay --example asyncapi [EXCHANGE]`. `make test`
//! validates its output with deploy/local/asyncapi-check.mjs.

fn main() -> anyhow::Result<()> {
    let exchange = std::env::args()
        .nth(1)
        .unwrap_or_else(|| ordermesh_messaging::amqp::DEFAULT_EXCHANGE.to_owned());
    let pool = ordermesh_gateway::rest::descriptor_pool(ordermesh_proto::FILE_DESCRIPTOR_SET)?;
    let document = relay::asyncapi::document(&pool, &exchange)?;
    println!("{}", serde_json::to_string_pretty(&document)?);
    Ok(())
}
