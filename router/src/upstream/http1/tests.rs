use super::*;

fn head(text: &str, method: &Method) -> Result<Option<ResponseHead>, Http1Error> {
    let mut buf = BytesMut::from(text.as_bytes());
    parse_response_head(&mut buf, method)
}

fn body_of(
    framing: Framing,
    wire: &[u8],
) -> Result<(Vec<u8>, Option<HeaderMap>, usize), Http1Error> {
    // Feed the wire one byte at a time: framing must not depend on read boundaries.
    let mut reader = BodyReader::new(framing);
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut trailers = None;
    for &b in wire {
        buf.extend_from_slice(&[b]);
        if reader.is_done() {
            continue;
        }
        while let Some(event) = reader.step(&mut buf)? {
            match event {
                BodyEvent::Data(d) => data.extend_from_slice(&d),
                BodyEvent::Trailers(t) => trailers = Some(t),
                BodyEvent::End => {}
            }
            if reader.is_done() {
                break;
            }
        }
    }
    assert!(reader.is_done(), "body not finished");
    Ok((data, trailers, buf.len()))
}

#[test]
fn framing_follows_rfc_9112() {
    let get = Method::GET;
    let cases = [
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            Framing::Length(5),
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Framing::Empty,
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Framing::Chunked,
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
            Framing::Chunked,
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            Framing::UntilClose,
            false,
        ),
        ("HTTP/1.1 200 OK\r\n\r\n", Framing::UntilClose, false),
        (
            "HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
            Framing::Empty,
            true,
        ),
        ("HTTP/1.1 304 Not Modified\r\n\r\n", Framing::Empty, true),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n",
            Framing::Length(7),
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
            Framing::Length(5),
            false,
        ),
        (
            "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
            Framing::Length(5),
            false,
        ),
        (
            "HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n",
            Framing::Length(5),
            true,
        ),
    ];
    for (text, framing, keep_alive) in cases {
        let parsed = head(text, &get).unwrap().unwrap();
        assert_eq!(parsed.framing, framing, "{text:?}");
        assert_eq!(parsed.keep_alive, keep_alive, "{text:?}");
    }
    let head_req = head(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        &Method::HEAD,
    )
    .unwrap()
    .unwrap();
    assert_eq!(head_req.framing, Framing::Empty);
}

#[test]
fn bad_heads_are_errors_and_partial_heads_wait() {
    assert!(
        head("HTTP/1.1 200 OK\r\nContent-Len", &Method::GET)
            .unwrap()
            .is_none()
    );
    for bad in [
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        "garbage\r\n\r\n",
    ] {
        assert!(head(bad, &Method::GET).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn chunked_bodies_decode_with_trailers_whatever_the_read_boundaries() {
    let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\nx-n: 2\r\n\r\nNEXT";
    let (data, trailers, left) = body_of(Framing::Chunked, wire).unwrap();
    assert_eq!(data, b"hello world");
    let trailers = trailers.unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-n"], "2");
    assert_eq!(left, 4, "bytes after the body stay for the next response");
    let (data, trailers, _) = body_of(Framing::Chunked, b"3\r\nabc\r\n0\r\n\r\n").unwrap();
    assert_eq!((data.as_slice(), trailers), (&b"abc"[..], None));
}

#[test]
fn invalid_chunks_are_errors() {
    for bad in [
        &b"x\r\n"[..],
        b"5\r\nhelloXX",
        b"fffffffffffffffff\r\n",
        b"\r\n",
    ] {
        assert!(
            body_of(Framing::Chunked, bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn content_length_bodies_stop_at_their_length() {
    let (data, _, left) = body_of(Framing::Length(5), b"helloHTTP/1.1").unwrap();
    assert_eq!(data, b"hello");
    assert_eq!(left, 8);
}
