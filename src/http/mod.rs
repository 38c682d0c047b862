//! HTTP/1.x for beacons: `request` turns bytes into a request (no IO), `response` holds the
//! pre-rendered answers, `conn` runs one connection (`context` is what a core's connections
//! share, `framing` finds where a body ends);
//! `router` sends each request to what answers it (beacons to `crate::ingest::intake`);
//! `dialect` (with `answer`, `cors`, `chunked`) speaks pixels, POST bodies and CORS.

pub mod answer;
pub mod chunked;
pub mod config;
pub mod conn;
pub mod context;
pub mod cors;
pub mod dialect;
mod framing;
pub mod idle;
pub mod request;
pub mod response;
mod router;
