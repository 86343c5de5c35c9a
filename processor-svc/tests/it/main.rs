//! Integration tests of processor-svc against the local PostgreSQL and
//! RabbitMQ, one binary so it links once. Every test spawns its own service
//! with a fresh database, exchange and queue ([`helpers::spawn_app`]).

mod accounts;
mod auth;
mod cancellations;
mod fuzz;
mod helpers;
mod hostile;
mod lifecycle;
mod payments;
mod poison;
mod transactions;
