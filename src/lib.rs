//! handoff: moves a caller from an AI-answered phone call to WhatsApp without losing a word.
//!
//! Module map (see `docs/architecture.md` for the bird's-eye view and invariants):
//! - [`config`]: typed settings from the environment, validated at start-up.
//! - [`domain`]: pure types and rules (customer ids, the shared context).
//! - [`store`]: storage ports and adapters (embedded redb, Cosmos DB, Redis).
//! - [`http`]: the routers; handlers only translate.
//! - [`app`]: wiring, workers, graceful shutdown.
//! - [`runtime`]: the runtimes conversations run on, apart from the sockets.
//! - [`telemetry`]: logging set-up.
//! - [`whatsapp`]: inbox, worker, send planner, ACS and sandbox providers.
//! - [`bench`]: `handoff bench`, the load and performance harness.

pub mod acs;
pub mod agent;
pub mod app;
pub mod bench;
pub mod config;
pub mod demo;
pub mod domain;
pub mod eventgrid;
pub mod handoff;
pub mod http;
pub mod identity;
pub mod runtime;
pub mod simulate;
pub mod store;
pub mod telemetry;
pub mod voice;
pub mod whatsapp;
