//! HTTP/1.0 and HTTP/1.1: heads ([`head`]), bodies ([`body`]) and a direction's stream of
//! messages ([`stream`]).

pub mod body;
pub mod head;
pub mod stream;
