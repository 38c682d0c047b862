//! HTTP/1.x for beacons: `request` turns bytes into a request (no IO), `response` holds the
//! pre-rendered answers, `conn` runs one connection.

pub mod conn;
pub mod request;
pub mod response;
