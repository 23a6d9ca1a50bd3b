//! The API over a real socket, and its graceful shutdown.

use iotcore_api::{serve, ApiConfig};
use iotcore_store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[sqlx::test(migrator = "iotcore_store::MIGRATOR")]
async fn serves_http_until_shutdown_is_requested(pool: sqlx::PgPool) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let config = ApiConfig::default();
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { serve(listener, &config, Store::from_pool(pool), shutdown).await }
    });

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("{\"status\":\"ok\"}"), "{response}");

    shutdown.cancel();
    server.await.unwrap().unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}
