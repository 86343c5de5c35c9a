//! The ordermesh wire contracts, generated from the `.proto` files beside
//! this crate: `order::v1` (OrderService), `payment::v1` (AccountService),
//! `auth::v1` (AuthService: registration and tokens) and `events::v1` (the
//! messages carried over RabbitMQ), plus the encoded file descriptor set
//! used for gRPC reflection and REST transcoding.
//!
//! This crate imports nothing of ours. Conversions from these wire types into
//! a service's domain types live in that service, at the handler boundary.

/// Encoded `FileDescriptorSet` of every ordermesh contract and its imports,
/// with custom options (`google.api.http`) and source comments kept.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ordermesh_descriptor.bin"));

pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
}

pub mod order {
    pub mod v1 {
        tonic::include_proto!("ordermesh.order.v1");
    }
}

pub mod payment {
    pub mod v1 {
        tonic::include_proto!("ordermesh.payment.v1");
    }
}

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("ordermesh.auth.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("ordermesh.events.v1");

        /// Routing key of [`OrderCreated`].
        pub const ORDER_CREATED: &str = "order.created";
        /// Routing key of [`PaymentSucceeded`].
        pub const PAYMENT_SUCCEEDED: &str = "payment.succeeded";
        /// Routing key of [`PaymentFailed`].
        pub const PAYMENT_FAILED: &str = "payment.failed";
        /// Routing key of [`OrderCancelled`].
        pub const ORDER_CANCELLED: &str = "order.cancelled";
        /// Routing key of [`PaymentRefunded`].
        pub const PAYMENT_REFUNDED: &str = "payment.refunded";
    }
}
