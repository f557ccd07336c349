//! HTTP/2: framing ([`frame`]) and header compression ([`hpack`]).

pub mod frame;
pub mod hpack;
