//! The plain HTTP/1.1 client against hand-written servers: connection reuse, a keep-alive
//! connection the server closed meanwhile, and responses that end the connection.

use std::net::SocketAddr;
use std::time::Duration;

use loadgen::http1::{Client, Request};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::common::read_request;

/// A listener on 127.0.0.1:0 and its address.
async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    (listener, addr)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";

fn request(url: &str, id: u64) -> Request<'_> {
    Request {
        url,
        body: b"{}",
        bearer: Some("sk-1"),
        request_id: id,
    }
}

async fn body(client: &Client, url: &str, id: u64) -> (u16, Vec<u8>) {
    let mut resp = client
        .post(&request(url, id))
        .await
        .unwrap_or_else(|e| panic!("request {id}: {e}"));
    let mut out = Vec::new();
    while let Some((piece, _)) = resp
        .next_bytes()
        .await
        .unwrap_or_else(|e| panic!("body {id}: {e}"))
    {
        out.extend_from_slice(&piece);
    }
    (resp.status, out)
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut accepted = 0;
        let mut heads = Vec::new();
        // Only one connection is expected; a second accept would time out.
        while let Ok(Ok((mut sock, _))) =
            tokio::time::timeout(Duration::from_millis(500), listener.accept()).await
        {
            accepted += 1;
            while let Some(head) = read_request(&mut sock).await {
                heads.push(head);
                if sock.write_all(OK).await.is_err() {
                    break;
                }
                if heads.len() == 3 {
                    return (accepted, heads);
                }
            }
        }
        (accepted, heads)
    });
    let client = Client::new();
    let url = format!("http://{addr}/v1/chat/completions");
    for id in 1..=3 {
        assert_eq!(body(&client, &url, id).await, (200, b"hello".to_vec()));
    }
    let (accepted, heads) = server.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(accepted, 1, "three requests, one connection");
    assert!(heads[0].starts_with("post /v1/chat/completions http/1.1\r\n"));
    assert!(heads[0].contains(&format!("host: {addr}")));
    assert!(heads[0].contains("authorization: bearer sk-1"));
    assert!(heads[2].contains("x-request-id: tb-3"));
}

#[tokio::test]
async fn a_keep_alive_connection_closed_by_the_server_is_replaced() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut accepted = 0;
        for _ in 0..2 {
            let Ok(Ok((mut sock, _))) =
                tokio::time::timeout(Duration::from_secs(5), listener.accept()).await
            else {
                break;
            };
            accepted += 1;
            if read_request(&mut sock).await.is_some() {
                let _ = sock.write_all(OK).await;
            }
            // Close the kept-alive connection right after answering, as an idle timeout would.
            drop(sock);
        }
        accepted
    });
    let client = Client::new();
    let url = format!("http://{addr}/v1/chat/completions");
    assert_eq!(body(&client, &url, 1).await.0, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The pooled connection is dead: the request goes again on a new one, once.
    assert_eq!(body(&client, &url, 2).await, (200, b"hello".to_vec()));
    assert_eq!(server.await.unwrap_or_else(|e| panic!("{e}")), 2);
}

#[tokio::test]
async fn close_delimited_and_error_bodies_are_read_whole() {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let replies: [&[u8]; 2] = [
            b"HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: [DONE]\n\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many Requests\r\ncontent-length: 7\r\nconnection: close\r\n\r\nlimited",
        ];
        for reply in replies {
            let Ok(Ok((mut sock, _))) =
                tokio::time::timeout(Duration::from_secs(5), listener.accept()).await
            else {
                return;
            };
            if read_request(&mut sock).await.is_some() {
                let _ = sock.write_all(reply).await;
            }
        }
    });
    let client = Client::new();
    let url = format!("http://{addr}/v1/chat/completions");
    assert_eq!(
        body(&client, &url, 1).await,
        (200, b"data: [DONE]\n\n".to_vec())
    );
    let mut resp = client
        .post(&request(&url, 2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status, 429, "the interim 100 is skipped");
    assert_eq!(
        &resp
            .read_to_limit(1024)
            .await
            .unwrap_or_else(|e| panic!("{e}"))[..],
        b"limited"
    );
}

#[tokio::test]
async fn a_refused_connection_is_an_error_naming_the_address() {
    // Bind and drop: nothing listens on this port any more.
    let (_, addr) = listen().await;
    let client = Client::new();
    let url = format!("http://{addr}/v1/chat/completions");
    let err = client
        .post(&request(&url, 1))
        .await
        .err()
        .unwrap_or_else(|| panic!("a refused connection must fail"));
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn https_targets_go_through_reqwest_and_speak_tls() {
    // A plain-TCP server on the port: a TLS client must fail in the handshake. Before reqwest
    // had a TLS backend, every https:// request failed with "invalid URL" without connecting.
    let (listener, addr) = listen().await;
    let accepted = tokio::spawn(async move {
        let Ok(Ok((mut sock, _))) =
            tokio::time::timeout(Duration::from_secs(5), listener.accept()).await
        else {
            return false;
        };
        let _ = sock
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
        true
    });
    let mut spec = crate::common::spec(addr);
    spec.url = format!("https://{addr}/v1/chat/completions");
    let client = crate::common::client();
    let (rec, _) = loadgen::client::execute_observed(&client, spec).await;
    assert_eq!(rec.outcome, reports::Outcome::ServerError);
    let err = rec.error.unwrap_or_default();
    assert!(!err.contains("invalid URL"), "{err}");
    assert!(
        accepted.await.unwrap_or_else(|e| panic!("{e}")),
        "the client connected"
    );
}
