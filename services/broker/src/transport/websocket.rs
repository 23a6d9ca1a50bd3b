//! MQTT over WebSocket: the HTTP upgrade on `/mqtt` with subprotocol `mqtt`, and an adapter
//! that turns binary frames back into the MQTT byte stream.
//!
//! MQTT packets are not aligned on frames: one frame may carry part of a packet or several
//! packets [MQTT-6.0.0-2], so the adapter is a plain byte stream and the connection's own
//! decoder finds the packet boundaries, exactly as on TCP.

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The only path MQTT is served on.
pub const PATH: &str = "/mqtt";
/// Subprotocols accepted, in order of preference: `mqtt` (MQTT 3.1.1 and 5, [MQTT-6.0.0-3]),
/// and `mqttv3.1`, which MQTT 3.1 clients send.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];
/// Frames are written in pieces of at most this size, so that what one write buffers is
/// bounded whatever the connection hands over.
const WRITE_CHUNK: usize = 64 * 1024;

/// Frame and buffer limits for one WebSocket connection, derived from the packet size limit.
pub fn config(max_packet_size: u32) -> WebSocketConfig {
    // A frame may hold a whole packet of the largest size plus a few small ones behind it.
    let max_message = usize::try_from(max_packet_size)
        .unwrap_or(usize::MAX)
        .saturating_add(64 * 1024);
    WebSocketConfig::default()
        // Allocated per connection up front: keep it small, it grows only while reading.
        .read_buffer_size(8 * 1024)
        // Write each frame through at once; the connection already batches its writes.
        .write_buffer_size(0)
        .max_write_buffer_size(4 * WRITE_CHUNK)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Performs the HTTP upgrade: `/mqtt` only (404 otherwise) and a `mqtt` subprotocol
/// (400 otherwise), which the response echoes as RFC 6455 requires.
pub async fn accept<S>(stream: S, config: WebSocketConfig) -> Result<WsStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, upgrade, Some(config)).await?;
    Ok(WsStream::new(ws))
}

#[allow(clippy::result_large_err)] // the signature tungstenite's callback requires
fn upgrade(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() != PATH {
        return Err(refuse(StatusCode::NOT_FOUND, "MQTT is served on /mqtt"));
    }
    let Some(subprotocol) = subprotocol(request) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the Sec-WebSocket-Protocol header must offer mqtt",
        ));
    };
    response.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(subprotocol),
    );
    Ok(response)
}

/// The subprotocol to answer with, from every `Sec-WebSocket-Protocol` header offered.
fn subprotocol(request: &Request) -> Option<&'static str> {
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .collect();
    SUBPROTOCOLS
        .into_iter()
        .find(|wanted| offered.iter().any(|o| o.eq_ignore_ascii_case(wanted)))
}

fn refuse(status: StatusCode, why: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(why.to_owned()));
    *response.status_mut() = status;
    response
}

/// A WebSocket seen as the MQTT byte stream: binary frames in and out, pings answered by
/// tungstenite, a close frame read as end of stream. A text frame is a protocol error
/// [MQTT-6.0.0-1]: reading fails, and shutting down then closes with 1003.
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary frame.
    unread: Bytes,
    /// The close frame to send on shutdown when the peer broke the protocol.
    close: Option<CloseFrame>,
}

impl<S> WsStream<S> {
    fn new(ws: WebSocketStream<S>) -> WsStream<S> {
        WsStream {
            ws,
            unread: Bytes::new(),
            close: None,
        }
    }
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.unread.is_empty() {
                let n = this.unread.len().min(buf.remaining());
                buf.put_slice(&this.unread[..n]);
                this.unread.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.unread = data,
                Some(Ok(Message::Text(_))) => {
                    this.close = Some(CloseFrame {
                        code: CloseCode::Unsupported,
                        reason: "MQTT is carried in binary frames".into(),
                    });
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text frame on an MQTT WebSocket",
                    )));
                }
                // tungstenite answers pings and close frames itself; after a close frame
                // the stream ends, which reads as end of file.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => {}
                Some(Ok(Message::Frame(_))) => {}
                Some(Err(e)) => {
                    if let WsError::Capacity(_) = e {
                        this.close = Some(CloseFrame {
                            code: CloseCode::Size,
                            reason: "frame too large".into(),
                        });
                    } else if let WsError::Protocol(_) = e {
                        this.close = Some(CloseFrame {
                            code: CloseCode::Protocol,
                            reason: "WebSocket protocol error".into(),
                        });
                    }
                    return Poll::Ready(Err(io_error(e)));
                }
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Waits until the previous frame has left, so at most one chunk is ever buffered.
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io_error)?;
        let n = buf.len().min(WRITE_CHUNK);
        let frame = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
        Pin::new(&mut this.ws).start_send(frame).map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(frame) = this.close.take() {
            ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io_error)?;
            // Queues the close frame; `poll_close` below then only flushes it.
            let _ = Pin::new(&mut this.ws).start_send(Message::Close(Some(frame)));
        }
        Pin::new(&mut this.ws).poll_close(cx).map_err(io_error)
    }
}
