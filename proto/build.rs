//! Compiles the contracts with protox (no system `protoc`) and writes the
//! encoded descriptor set next to the generated code. The encoded set keeps
//! custom options such as `google.api.http`, which `file_descriptor_set()`
//! would drop; reflection and REST transcoding need them.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "ordermesh/order/v1/order.proto",
    "ordermesh/payment/v1/account.proto",
    "ordermesh/events/v1/events.proto",
    "ordermesh/auth/v1/auth.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=ordermesh");
    println!("cargo:rerun-if-changed=google");

    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("ordermesh_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // Type names let the outbox label each payload with its protobuf name.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(compiler.file_descriptor_set(), config)?;
    Ok(())
}
