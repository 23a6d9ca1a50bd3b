//! Tests of the control plane through its router, each against a fresh database of its
//! own (`DATABASE_URL` names the server).

mod access;
mod certificates;
mod concurrency;
mod errors;
mod flow;
mod helpers;
mod idempotency;
mod openapi;
mod publish;
mod resources;
mod roles;
mod serve;
mod tokens;
mod walk;
