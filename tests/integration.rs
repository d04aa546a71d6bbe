//! The integration tests against real servers (a redis-server, a local Redis Cluster, Valkey),
//! in one binary: one link instead of one per file. Run one file's tests with its module name as
//! the filter, such as `cargo test --test integration guarantees::`.

mod support;

mod acceptance;
mod asyncapi;
mod batch;
mod cluster;
mod consumer;
mod delayed;
mod evolution;
mod guarantees;
mod health;
mod idempotency;
mod local;
mod middleware;
mod permissions;
mod publish;
mod rate_limit;
mod schema;
mod sentinel;
mod stats;
mod subscription;
mod tls;
mod typescript;
