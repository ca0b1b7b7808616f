//! The front door, where every client request enters: the accept loop and its connection
//! limits ([`server`]), the tower layers every request passes (timeouts, load shedding,
//! panics, slow bodies: [`layers`]), request ids and the access log ([`request_id`]),
//! reading a send's body whole ([`body`], shared by the proxy and the queue), and the admin
//! listener with what `/healthz` and `/readyz` report ([`admin`], [`health`]).

pub mod admin;
pub mod body;
pub mod health;
pub mod layers;
pub mod request_id;
pub mod server;
