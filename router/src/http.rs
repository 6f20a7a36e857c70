//! The downstream side: HTTP/1.1 and HTTP/2 requests in, responses out.
//! `proxy::handle` is the request hot path.

pub mod body;
pub mod errors;
pub mod h1_server;
pub mod headers;
pub mod proxy;
pub mod sticky;
pub mod w3c;

pub use body::ProxyBody;
pub use errors::ProxyError;
pub use headers::Downstream;
pub use proxy::{ProxyContext, handle};
