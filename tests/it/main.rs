//! Black-box and adapter tests, in one binary so the suite links once.
//!
//! Real servers only: adapters are tested against a real `redis-server` and a real
//! Cosmos DB-compatible server started per test (see `support::services`); remote HTTP APIs are
//! faked at the wire. Run everything with `scripts/test`, which installs those servers.

mod admin;
mod bench;
mod cosmos;
mod handoff_store;
mod handoff_story;
mod identity;
mod infra_contract;
mod message_log;
mod meta;
mod openai;
mod routing;
mod serve;
mod store_contract;
mod support;
mod voice;
mod voice_registry;
mod voice_tokens;
mod whatsapp;
mod whatsapp_load;
mod whatsapp_outbound;
