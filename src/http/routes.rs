//! The one route table: every path the server answers, the endpoint it is counted under in
//! `/metrics`, and which listener serves it. The dispatcher ([`super::dispatch`]) matches
//! requests against it, the request counter names endpoints from it, and the shipped proxy
//! examples are checked against it by a test that drives each route through nginx and Caddy.
//!
//! Paths are matched as warp's `path!` did: exact routes also match with one trailing slash
//! (`/push/`); a route with a parameter matches its prefix's segment followed by anything
//! (`/pool/cart:1`, and `/pool` alone with an empty parameter, which its handler refuses).

use crate::metrics::Endpoint;

/// How a route's path is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The path itself (`/push`).
    Exact,
    /// The path's segments, then a parameter: everything after them (`/pool/<name>`).
    Under,
}

/// One route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The path, or for [`Shape::Under`] the segments before the parameter, without a trailing
    /// slash (`/pool`).
    pub path: &'static str,
    /// How `path` is matched.
    pub shape: Shape,
    /// What the request is counted as, and which handler answers it.
    pub endpoint: Endpoint,
    /// Also served, without the password, on the `metrics_addr` listener.
    pub ops: bool,
    /// A path that reaches this route, for tests and documentation.
    pub example: &'static str,
    /// How the 404 reply names it (`/pool/<name>`).
    pub shown: &'static str,
}

const fn exact(path: &'static str, endpoint: Endpoint) -> Route {
    Route {
        path,
        shape: Shape::Exact,
        endpoint,
        ops: false,
        example: path,
        shown: path,
    }
}

const fn under(
    path: &'static str,
    endpoint: Endpoint,
    example: &'static str,
    shown: &'static str,
) -> Route {
    Route {
        path,
        shape: Shape::Under,
        endpoint,
        ops: false,
        example,
        shown,
    }
}

const fn ops(path: &'static str, endpoint: Endpoint) -> Route {
    Route {
        ops: true,
        ..exact(path, endpoint)
    }
}

/// Every route, in the order they are matched.
pub const ROUTES: &[Route] = &[
    // Backends.
    exact("/access", Endpoint::Access),
    exact("/push", Endpoint::Push),
    exact("/publish", Endpoint::Publish),
    exact("/broadcast", Endpoint::Broadcast),
    exact("/online", Endpoint::Online),
    exact("/stats", Endpoint::Stats),
    exact("/disconnect", Endpoint::Disconnect),
    exact("/rooms", Endpoint::Rooms),
    under(
        "/report/push",
        Endpoint::Report,
        "/report/push/m1",
        "/report/push/<id>",
    ),
    under("/pool", Endpoint::Pool, "/pool/cart", "/pool/<name>"),
    // Pages.
    exact("/ws", Endpoint::Ws),
    exact("/sse", Endpoint::Sse),
    exact("/push-serve.js", Endpoint::Client),
    // Pusher-compatible mode: pusher-js sockets and the server SDKs' HTTP API.
    under("/app", Endpoint::PusherSocket, "/app/app-key", "/app/<key>"),
    under(
        "/apps",
        Endpoint::PusherApi,
        "/apps/app-id/channels",
        "/apps/<id>/…",
    ),
    under(
        "/users",
        Endpoint::PusherApi,
        "/users/u1/terminate_connections",
        "/users/<id>/…",
    ),
    // Operators.
    exact("/admin", Endpoint::Admin),
    exact("/admin/series", Endpoint::Admin),
    exact("/admin/refusals", Endpoint::Admin),
    ops("/health", Endpoint::Health),
    ops("/ready", Endpoint::Ready),
    ops("/metrics", Endpoint::Metrics),
];

/// The route `path` (no query) reaches, with its parameter (empty for an exact route); `None`
/// for a path no route serves (404).
pub fn route(path: &str) -> Option<(&'static Route, &str)> {
    ROUTES.iter().find_map(|r| {
        let rest = path.strip_prefix(r.path)?;
        match r.shape {
            Shape::Exact => matches!(rest, "" | "/").then_some((r, "")),
            Shape::Under => match rest {
                "" => Some((r, "")),
                rest => rest.strip_prefix('/').map(|param| (r, param)),
            },
        }
    })
}

/// Every route as the 404 reply lists them.
pub fn listing() -> &'static str {
    static LISTING: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LISTING.get_or_init(|| {
        let shown: Vec<&str> = ROUTES.iter().map(|r| r.shown).collect();
        shown.join(", ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The endpoint a request for `path` is counted under (as `http::dispatch` counts it).
    fn endpoint(path: &str) -> Endpoint {
        route(path).map_or(Endpoint::Other, |(r, _)| r.endpoint)
    }

    #[test]
    fn paths_reach_their_routes_as_warp_matched_them() {
        assert_eq!(endpoint("/push"), Endpoint::Push);
        assert_eq!(endpoint("/push/"), Endpoint::Push);
        assert_eq!(endpoint("/push//"), Endpoint::Other);
        assert_eq!(endpoint("/pushx"), Endpoint::Other);
        assert_eq!(endpoint("/push-serve.js"), Endpoint::Client);
        assert_eq!(route("/pool/cart%3A1").map(|(_, p)| p), Some("cart%3A1"));
        assert_eq!(route("/pool").map(|(_, p)| p), Some(""));
        assert_eq!(endpoint("/poolx"), Endpoint::Other);
        assert_eq!(
            route("/app/k").map(|(r, p)| (r.endpoint, p)),
            Some((Endpoint::PusherSocket, "k"))
        );
        assert_eq!(endpoint("/apps/1/events"), Endpoint::PusherApi);
        assert_eq!(endpoint("/admin/series"), Endpoint::Admin);
        assert_eq!(endpoint("/admin/other"), Endpoint::Other);
        assert_eq!(endpoint("/"), Endpoint::Other);
        for r in ROUTES {
            assert_eq!(
                route(r.example).map(|(x, _)| x.path),
                Some(r.path),
                "{}",
                r.example
            );
        }
    }
}
