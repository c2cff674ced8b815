//! Accepting connections: HTTP/1.1 with a deadline for each request's headers, so a client
//! that trickles them (slow-loris) or opens a connection and says nothing is cut off instead
//! of holding a task and a socket for ever; and a graceful shutdown. (`axum::serve` sets no
//! deadline: hyper has one only when it is given a timer.)

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Serve `app` on `listener` until `shutdown` completes, then wait for the open
/// connections to finish their requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then accept again.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Stream frames go out as they are written.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::post;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn start(header_timeout: Duration) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/echo", post(|body: String| async move { body }));
        tokio::spawn(serve(listener, app, header_timeout, std::future::pending()));
        addr
    }

    /// Read until the server closes the connection or `limit` passes; what was read.
    async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        tokio::time::timeout(limit, stream.read_to_end(&mut out))
            .await
            .ok()
            .map(|_| out)
    }

    #[tokio::test]
    async fn a_trickled_header_is_cut_off() {
        let addr = start(Duration::from_millis(300)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        stream.write_all(b"POST /echo HTTP/1.1\r\n").await.unwrap();
        // One byte every 50 ms: always something new, never the end of the headers.
        let mut cut_off = false;
        for _ in 0..60 {
            if stream.write_all(b"x").await.is_err() {
                cut_off = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !cut_off {
            cut_off = read_to_close(&mut stream, Duration::from_secs(1))
                .await
                .is_some();
        }
        assert!(cut_off, "still open after {:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed() {
        let addr = start(Duration::from_millis(300)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert!(read_to_close(&mut stream, Duration::from_secs(3))
            .await
            .is_some());
    }

    #[tokio::test]
    async fn requests_on_time_are_served_on_a_kept_alive_connection() {
        let addr = start(Duration::from_secs(5)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        for body in ["one", "two"] {
            let request = format!(
                "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut buf = vec![0; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(text.ends_with(body), "{text}");
        }
    }
}
