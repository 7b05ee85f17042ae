//! POSTs to the business server: callbacks (`callbacks.rs`) and the Pusher mode's webhooks.
//! Credentials in a URL (`http://user:password@host/…`) go out as Basic authentication.
//!
//! hyper's connection-level HTTP/1.1 client (hyper parses the reply; we read only its status),
//! one TCP connection per request, `http://` URLs only (for HTTPS, point it at a local TLS
//! proxy). Both senders send one request at a time from their own task, so a pool of kept-alive
//! connections would buy little; hyper-util's pooled client, used before, weighed more than
//! its worth in the binary (it fell by 0.3 MB without it, in a build that also added pools).

use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::task::AbortOnDropHandle;
use warp::http::{header, Request, StatusCode, Uri};

/// POSTs JSON `body` to `url` with extra `headers`; the reply's status, or why there is none.
/// The whole exchange (connect, write, status line) is bounded by `timeout`.
pub async fn post_json(
    url: &Uri,
    headers: &[(&'static str, &str)],
    body: String,
    timeout: Duration,
) -> Result<StatusCode, String> {
    tokio::time::timeout(timeout, exchange(url, headers, body))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

async fn exchange(
    url: &Uri,
    headers: &[(&'static str, &str)],
    body: String,
) -> Result<StatusCode, String> {
    if url.scheme_str() != Some("http") {
        return Err("only http:// URLs are supported".into());
    }
    let authority = url.authority().ok_or("the URL has no host")?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) = http1::handshake::<_, String>(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    // Drives the connection; dropped (aborted) with this future, by the timeout or when done.
    let _driver = AbortOnDropHandle::new(tokio::spawn(connection));
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    // `user:password@` in the URL is sent as Basic authentication, never in the Host header.
    let (userinfo, host_port) = match authority.as_str().rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, authority.as_str()),
    };
    let mut request = Request::post(path)
        .header(header::HOST, host_port)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "push-serve")
        .header(header::CONNECTION, "close");
    if let Some(userinfo) = userinfo {
        use base64::Engine;
        let credentials = crate::wire::percent_decode(userinfo);
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        request = request.header(header::AUTHORIZATION, format!("Basic {encoded}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(body).map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status())
}
