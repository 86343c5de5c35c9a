//! Integration tests of order-svc: each test starts the real service on port
//! 0 against a fresh PostgreSQL database and a private RabbitMQ exchange and
//! talks to it through a generated gRPC client and a lapin publisher.

mod auth;
mod cancel;
mod create;
mod ends;
mod fuzz;
mod helpers;
mod hostile;
mod lifecycle;
mod payments;
mod read;
mod tls;
mod watch;
