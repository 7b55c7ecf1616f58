//! Helpers shared by the tests: real backing services and the app on port 0.

pub mod acs_signature;
pub mod app;
pub mod fake_acs;
pub mod services;

#[allow(unused_imports)]
pub use app::TestApp;
#[allow(dead_code)]
pub mod acs_socket;
#[allow(dead_code)]
pub mod acs_tokens;
#[allow(dead_code)]
pub mod fake_calling;
#[allow(dead_code)]
pub mod fake_graph;
