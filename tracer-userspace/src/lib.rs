//! tracer's agent: kernel events in, HTTP spans out. The binary (`main.rs`) parses the command
//! line and calls [`app`]; the modules follow the flow of the bytes:
//! [`capture`] -> [`conn`] -> [`protocol`] -> [`correlate`] -> [`export`]; [`metrics`] serves
//! the agent's own counters.

pub mod app;
pub mod capture;
pub mod cli;
pub mod conn;
pub mod correlate;
pub mod export;
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod golden;
pub mod metrics;
pub mod protocol;
pub mod tls;
