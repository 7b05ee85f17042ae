//! What a socket speaks, one module per protocol. Each takes a socket that already joined the
//! [`Hub`](crate::hub::Hub) and runs its task; none of them knows another.

pub mod close_watch;
pub mod native;
