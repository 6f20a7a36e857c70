//! A minimal HTTP/1.1 client over one keep-alive connection, for the probes that need
//! exact control of timing (register-to-serving) or of connection count (idle
//! connections). It only knows what the router and backends here answer: responses
//! framed by `Content-Length`.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends `GET path` with `Host: host` and returns the response status; the body is
    /// read (so the connection can be reused) and dropped.
    pub async fn get(&mut self, host: &str, path: &str) -> anyhow::Result<u16> {
        Ok(self.get_with_body(host, path).await?.0)
    }

    /// Like [`Connection::get`], and returns the body too.
    pub async fn get_with_body(
        &mut self,
        host: &str,
        path: &str,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench\r\n\r\n");
        self.stream.write_all(request.as_bytes()).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> anyhow::Result<(u16, Vec<u8>)> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf)? {
                httparse::Status::Complete(head_len) => {
                    let status = response.code.unwrap_or(0);
                    let mut body_len = 0usize;
                    for h in response.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            body_len = std::str::from_utf8(h.value)?.trim().parse()?;
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            bail!("chunked responses are not supported by this client");
                        }
                    }
                    while self.buf.len() < head_len + body_len {
                        self.fill().await?;
                    }
                    let body = self.buf[head_len..head_len + body_len].to_vec();
                    self.buf.drain(..head_len + body_len);
                    return Ok((status, body));
                }
                httparse::Status::Partial => self.fill().await?,
            }
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed by the server");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
