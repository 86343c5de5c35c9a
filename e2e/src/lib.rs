//! Holds no code: the end-to-end tests live in `tests/it`, where they start
//! the built `order-svc`, `processor-svc` and `relay` binaries the way a
//! user does and drive them over gRPC.
