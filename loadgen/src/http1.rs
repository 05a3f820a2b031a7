//! A lean HTTP/1.1 client for plain `http://` targets, the load generator's hot path.
//!
//! Why not reqwest here: at tens of thousands of requests a second on one core, reqwest spent
//! most of its ~19 µs per request outside the socket (parsing the URL string again for every
//! request, its connection pool, header maps, boxed bodies), and the load generator reached
//! about 38 % of `wrk`'s rate against the same server (`benches/loadgen_rate`). This client
//! does what a load generator needs and no more: one idle-connection list per `host:port`, the
//! request written with one `write`, the response head parsed with `httparse`, and the body
//! (content-length, chunked or until close) handed to the caller as it comes off the socket,
//! with the time of the read that brought it. TLS, proxies and redirects stay with reqwest: the
//! caller ([`crate::client::HttpClient`]) only sends plain `http://` URLs here, and only when
//! no proxy is configured in the environment.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections kept per `host:port`: more than any scenario's concurrency needs.
const MAX_IDLE: usize = 4096;
/// A response head larger than this is refused rather than buffered without end.
const MAX_HEAD: usize = 64 * 1024;
/// How long a connect may take, as reqwest's `connect_timeout` in the other path.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request failed, in words that end up in `RequestRecord::error`.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("not a plain http:// URL: {0}")]
    Url(String),
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    #[error("cannot send the request: {0}")]
    Write(std::io::Error),
    #[error("cannot read the response: {0}")]
    Read(std::io::Error),
    #[error("connection closed before the response head")]
    ClosedBeforeHead,
    #[error("connection closed before the end of the body")]
    ClosedMidBody,
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// The target's parts, split once per request from the URL string.
struct Target<'a> {
    authority: &'a str,
    path: &'a str,
}

fn split_url(url: &str) -> Result<Target<'_>, Http1Error> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Http1Error::Url(url.to_owned()))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // User info, fragments and empty hosts are left to reqwest's validation upstream; here
    // they would be sent wrongly, so refuse them.
    if authority.is_empty() || authority.contains('@') || path.contains('#') {
        return Err(Http1Error::Url(url.to_owned()));
    }
    Ok(Target { authority, path })
}

/// One open connection and the bytes read from it but not yet consumed.
struct Conn {
    sock: TcpStream,
    buf: BytesMut,
}

/// A pool of keep-alive connections; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Client {
    /// Idle connections per `host:port`. A run talks to one or two targets, so a short list
    /// searched in order beats hashing the authority for every request.
    idle: Arc<Mutex<Vec<IdleList>>>,
}

/// A target's `host:port` and its idle connections, most recently used last.
type IdleList = (String, Vec<Conn>);

/// A request to send: the parts the load generator varies.
pub struct Request<'a> {
    pub url: &'a str,
    pub body: &'a [u8],
    pub bearer: Option<&'a str>,
    pub request_id: u64,
}

impl Client {
    pub fn new() -> Self {
        Self::default()
    }

    fn take_idle(&self, authority: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.iter_mut()
            .find(|(a, _)| a == authority)
            .and_then(|(_, conns)| conns.pop())
    }

    fn put_idle(&self, authority: &str, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        match idle.iter_mut().find(|(a, _)| a == authority) {
            Some((_, conns)) if conns.len() < MAX_IDLE => conns.push(conn),
            Some(_) => {}
            None => idle.push((authority.to_owned(), vec![conn])),
        }
    }

    async fn connect(authority: &str) -> Result<Conn, Http1Error> {
        // No port (`host`, `[::1]`) means http's 80.
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.ends_with(']') && !port.is_empty());
        let addr = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let sock = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| Http1Error::ConnectTimeout(authority.to_owned()))?
            .map_err(|source| Http1Error::Connect {
                authority: authority.to_owned(),
                source,
            })?;
        // Requests are written whole; Nagle would only hold them back.
        let _ = sock.set_nodelay(true);
        Ok(Conn {
            sock,
            buf: BytesMut::with_capacity(8 * 1024),
        })
    }

    /// Sends a JSON POST and returns once the response head has arrived.
    ///
    /// A connection taken from the idle list may have been closed by the server meanwhile;
    /// when such a connection fails before any byte of the response, the request goes once
    /// more on a new connection (as hyper does for the same case).
    pub async fn post(&self, req: &Request<'_>) -> Result<Response, Http1Error> {
        let target = split_url(req.url)?;
        let mut wire = Vec::with_capacity(256 + req.body.len());
        encode(&mut wire, &target, req);
        if let Some(conn) = self.take_idle(target.authority) {
            match exchange(conn, &wire).await {
                Ok(head) => return Ok(self.response(target.authority, head)),
                Err((err, answered)) if answered => return Err(err),
                Err(_) => {} // stale keep-alive connection: try a new one
            }
        }
        let conn = Self::connect(target.authority).await?;
        match exchange(conn, &wire).await {
            Ok(head) => Ok(self.response(target.authority, head)),
            Err((err, _)) => Err(err),
        }
    }

    fn response(&self, authority: &str, head: Head) -> Response {
        Response {
            status: head.status,
            body: head.framing,
            keep_alive: head.keep_alive,
            read_at: head.read_at,
            conn: Some(head.conn),
            pool: self.clone(),
            authority: authority.to_owned(),
        }
    }
}

/// Writes the request head and body into `out`.
fn encode(out: &mut Vec<u8>, target: &Target<'_>, req: &Request<'_>) {
    out.extend_from_slice(b"POST ");
    if !target.path.starts_with('/') {
        out.push(b'/');
    }
    out.extend_from_slice(target.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(target.authority.as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\naccept: */*\r\n");
    if let Some(key) = req.bearer {
        out.extend_from_slice(b"authorization: Bearer ");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(b"x-request-id: tb-");
    out.extend_from_slice(digits.format(req.request_id).as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(digits.format(req.body.len()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(req.body);
}

/// A parsed response head and the connection it came on.
struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
    read_at: Instant,
    conn: Conn,
}

/// Writes the request and reads the response head. On failure, also says whether any byte
/// of a response had arrived (then the request must not be sent again).
async fn exchange(mut conn: Conn, wire: &[u8]) -> Result<Head, (Http1Error, bool)> {
    conn.buf.clear();
    conn.sock
        .write_all(wire)
        .await
        .map_err(|e| (Http1Error::Write(e), false))?;
    let mut read_at = Instant::now();
    loop {
        // Parse whatever is buffered first: a 100 Continue and the real head can share a read.
        if !conn.buf.is_empty() {
            match parse_head(&conn.buf).map_err(|e| (e, true))? {
                Some(parsed) if (100..200).contains(&parsed.status) && parsed.status != 101 => {
                    // An interim response: drop it and read the final one.
                    let _ = conn.buf.split_to(parsed.len);
                    continue;
                }
                Some(parsed) => {
                    let _ = conn.buf.split_to(parsed.len);
                    return Ok(Head {
                        status: parsed.status,
                        framing: parsed.framing,
                        keep_alive: parsed.keep_alive,
                        read_at,
                        conn,
                    });
                }
                None if conn.buf.len() > MAX_HEAD => {
                    return Err((
                        Http1Error::Malformed(format!("response head over {MAX_HEAD} bytes")),
                        true,
                    ));
                }
                None => {}
            }
        }
        let answered = !conn.buf.is_empty();
        match conn.sock.read_buf(&mut conn.buf).await {
            Ok(0) => return Err((Http1Error::ClosedBeforeHead, answered)),
            Ok(_) => read_at = Instant::now(),
            Err(e) => return Err((Http1Error::Read(e), answered)),
        }
    }
}

struct ParsedHead {
    status: u16,
    len: usize,
    framing: Framing,
    keep_alive: bool,
}

/// Parses a complete head at the start of `buf`, or `None` when more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<ParsedHead>, Http1Error> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Http1Error::Malformed(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    let http10 = resp.version == Some(0);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut keep_alive = !http10;
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse()
                .map_err(|_| Http1Error::Malformed(format!("content-length {value:?}")))?;
            if length.is_some_and(|m| m != n) {
                return Err(Http1Error::Malformed(
                    "conflicting content-length headers".into(),
                ));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only counts as the last coding (RFC 9112 §6.3).
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = if status == 204 || status == 304 {
        Framing::Done
    } else if chunked {
        Framing::Chunked(Chunk::Size)
    } else if let Some(n) = length {
        if n == 0 {
            Framing::Done
        } else {
            Framing::Length(n)
        }
    } else {
        Framing::UntilClose
    };
    Ok(Some(ParsedHead {
        status,
        len,
        framing,
        keep_alive,
    }))
}

/// How the body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// No length and not chunked: the body ends when the server closes.
    UntilClose,
    Done,
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last (zero) chunk: trailer lines until an empty one.
    Trailers,
}

/// A response whose head has arrived; its body is read with [`Response::next_bytes`].
/// Dropped after the whole body was read, the connection goes back to the idle list.
pub struct Response {
    pub status: u16,
    body: Framing,
    keep_alive: bool,
    read_at: Instant,
    conn: Option<Conn>,
    pool: Client,
    authority: String,
}

impl Response {
    /// The next piece of the body and when the read that brought it returned; `None` at the
    /// end of the body.
    pub async fn next_bytes(&mut self) -> Result<Option<(Bytes, Instant)>, Http1Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        loop {
            if let Some(piece) = decode(&mut self.body, &mut conn.buf)? {
                return Ok(Some((piece, self.read_at)));
            }
            if self.body == Framing::Done {
                return Ok(None);
            }
            match conn.sock.read_buf(&mut conn.buf).await {
                Ok(0) if self.body == Framing::UntilClose => {
                    self.body = Framing::Done;
                    self.keep_alive = false;
                    return Ok(None);
                }
                Ok(0) => {
                    self.keep_alive = false;
                    return Err(Http1Error::ClosedMidBody);
                }
                Ok(_) => self.read_at = Instant::now(),
                Err(e) => {
                    self.keep_alive = false;
                    return Err(Http1Error::Read(e));
                }
            }
        }
    }

    /// The whole body, up to `limit` bytes (the rest is read and dropped, and the connection
    /// is not reused).
    pub async fn read_to_limit(&mut self, limit: usize) -> Result<Bytes, Http1Error> {
        let mut out = BytesMut::new();
        while let Some((piece, _)) = self.next_bytes().await? {
            if out.len() < limit {
                let room = limit - out.len();
                out.extend_from_slice(&piece[..piece.len().min(room)]);
            } else {
                self.keep_alive = false;
                break;
            }
        }
        Ok(out.freeze())
    }
}

impl Drop for Response {
    fn drop(&mut self) {
        if self.keep_alive
            && self.body == Framing::Done
            && let Some(conn) = self.conn.take()
            && conn.buf.is_empty()
        {
            self.pool.put_idle(&self.authority, conn);
        }
    }
}

/// Takes the next piece of body data out of `buf`, advancing the framing; `None` when `buf`
/// holds no complete piece (or the body is done).
fn decode(framing: &mut Framing, buf: &mut BytesMut) -> Result<Option<Bytes>, Http1Error> {
    loop {
        match framing {
            Framing::Done => return Ok(None),
            Framing::UntilClose => {
                return Ok((!buf.is_empty()).then(|| buf.split().freeze()));
            }
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (*left).min(buf.len() as u64) as usize;
                let piece = buf.split_to(n).freeze();
                *left -= n as u64;
                if *left == 0 {
                    *framing = Framing::Done;
                }
                return Ok(Some(piece));
            }
            Framing::Chunked(state) => match *state {
                Chunk::Size => {
                    let Some(line_end) = find_crlf(buf) else {
                        if buf.len() > 1024 {
                            return Err(Http1Error::Malformed("chunk-size line too long".into()));
                        }
                        return Ok(None);
                    };
                    let line = &buf[..line_end];
                    let digits = line
                        .split(|b| *b == b';')
                        .next()
                        .map(<[u8]>::trim_ascii)
                        .unwrap_or_default();
                    let size = std::str::from_utf8(digits)
                        .ok()
                        .and_then(|d| u64::from_str_radix(d, 16).ok())
                        .ok_or_else(|| {
                            Http1Error::Malformed(format!(
                                "chunk size {:?}",
                                String::from_utf8_lossy(line)
                            ))
                        })?;
                    let _ = buf.split_to(line_end + 2);
                    *state = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(buf.len() as u64) as usize;
                    let piece = buf.split_to(n).freeze();
                    *state = if left == n as u64 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n as u64)
                    };
                    return Ok(Some(piece));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Http1Error::Malformed("no CRLF after chunk data".into()));
                    }
                    let _ = buf.split_to(2);
                    *state = Chunk::Size;
                }
                Chunk::Trailers => {
                    let Some(line_end) = find_crlf(buf) else {
                        if buf.len() > MAX_HEAD {
                            return Err(Http1Error::Malformed("trailers too long".into()));
                        }
                        return Ok(None);
                    };
                    let _ = buf.split_to(line_end + 2);
                    if line_end == 0 {
                        *framing = Framing::Done;
                    }
                }
            },
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(framing: &mut Framing, input: &[&[u8]]) -> Result<Vec<u8>, Http1Error> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for part in input {
            buf.extend_from_slice(part);
            while let Some(p) = decode(framing, &mut buf)? {
                out.extend_from_slice(&p);
            }
        }
        Ok(out)
    }

    fn ok(r: Result<Vec<u8>, Http1Error>) -> Vec<u8> {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    fn head(b: &[u8]) -> ParsedHead {
        match parse_head(b) {
            Ok(Some(h)) => h,
            Ok(None) => panic!("incomplete head"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire: &[u8] = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for cut in 0..wire.len() {
            let mut f = Framing::Chunked(Chunk::Size);
            let body = ok(drain(&mut f, &[&wire[..cut], &wire[cut..]]));
            assert_eq!(body, b"hello, world", "cut at {cut}");
            assert_eq!(f, Framing::Done, "cut at {cut}");
        }
    }

    #[test]
    fn bad_chunk_framing_is_an_error_not_a_hang() {
        let mut f = Framing::Chunked(Chunk::Size);
        assert!(drain(&mut f, &[b"zz\r\n"]).is_err());
        let mut f = Framing::Chunked(Chunk::Size);
        assert!(drain(&mut f, &[b"2\r\nabXX"]).is_err());
    }

    #[test]
    fn content_length_bodies_stop_at_their_length() {
        let mut f = Framing::Length(4);
        let body = ok(drain(&mut f, &[b"ab", b"cd"]));
        assert_eq!(body, b"abcd");
        assert_eq!(f, Framing::Done);
    }

    #[test]
    fn heads_give_status_framing_and_keep_alive() {
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(
            (h.status, h.framing, h.keep_alive),
            (200, Framing::Chunked(Chunk::Size), true)
        );
        let h = head(b"HTTP/1.1 429 Too Many\r\nContent-Length: 3\r\nConnection: close\r\n\r\n");
        assert_eq!(
            (h.status, h.framing, h.keep_alive),
            (429, Framing::Length(3), false)
        );
        let h = head(b"HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le"),
            Ok(None)
        ));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn urls_split_into_authority_and_path() {
        let split = |u: &str| {
            split_url(u)
                .map(|t| (t.authority.to_owned(), t.path.to_owned()))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let t = split("http://127.0.0.1:8080/v1/chat/completions");
        assert_eq!(t, ("127.0.0.1:8080".into(), "/v1/chat/completions".into()));
        assert_eq!(split("http://h:1"), ("h:1".into(), "/".into()));
        assert_eq!(split("http://h:1?x=1"), ("h:1".into(), "?x=1".into()));
        assert!(split_url("https://h/").is_err());
        assert!(split_url("http://u:p@h/").is_err());
    }
}
