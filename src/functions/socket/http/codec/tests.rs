//! The codec on fixed byte fixtures: every input split at every byte
//! boundary (and fed byte by byte) gives the same result as in one piece;
//! each error case of RFC 9112 that the codec must refuse; chunked edge
//! cases; the writers.

use std::net::IpAddr;

use super::*;

/// What a connection's stream of requests came to: for each message its
/// head (summarised) and body, then the error that ended it, if any.
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<(String, Vec<u8>)>,
    error: Option<HttpError>,
}

fn summary_req(h: &RequestHead) -> String {
    let fields: Vec<String> = h
        .fields()
        .iter()
        .map(|(n, v)| {
            format!(
                "{}={}",
                String::from_utf8_lossy(n),
                String::from_utf8_lossy(v)
            )
        })
        .collect();
    format!(
        "{} {} {:?} {:?} body={:?} keep={}",
        String::from_utf8_lossy(h.method_bytes()),
        String::from_utf8_lossy(h.target()),
        h.version(),
        fields,
        h.body(),
        h.keep_alive()
    )
}

fn summary_res(h: &ResponseHead) -> String {
    format!(
        "{} {:?} {:?} {} body={:?} keep={}",
        h.status(),
        String::from_utf8_lossy(h.reason()),
        h.version(),
        h.fields().len(),
        h.body(),
        h.keep_alive()
    )
}

/// Feeds `pieces` in turn, as a server would read them, to a request
/// parser and body decoder; `methods` given: a response parser instead,
/// answering those requests in order. At the end the peer closes.
fn drive(pieces: &[&[u8]], limits: Limits, methods: Option<&[Method]>) -> Outcome {
    let mut parser = HeadParser::new(limits);
    let mut req = RequestHead::default();
    let mut res = ResponseHead::default();
    let mut buf = Vec::new();
    let mut body: Option<BodyDecoder> = None;
    let mut out = Outcome {
        messages: Vec::new(),
        error: None,
    };
    let mut answered = 0;
    let mut step = |buf: &mut Vec<u8>, out: &mut Outcome| -> Result<bool, HttpError> {
        if let Some(d) = &mut body {
            let got = d.decode(buf)?;
            assert!(got.consumed <= buf.len() && got.data.end <= got.consumed);
            let data = buf[got.data].to_vec();
            out.messages.last_mut().unwrap().1.extend_from_slice(&data);
            buf.drain(..got.consumed);
            if d.is_done() {
                body = None;
            }
            return Ok(got.consumed > 0);
        }
        let (n, kind) = match methods {
            None => match parser.parse_request(buf, &mut req)? {
                Some(n) => {
                    out.messages.push((summary_req(&req), Vec::new()));
                    (n, req.body())
                }
                None => return Ok(false),
            },
            Some(m) => {
                let method = m.get(answered).copied().unwrap_or(Method::Get);
                match parser.parse_response(buf, method, &mut res)? {
                    Some(n) => {
                        out.messages.push((summary_res(&res), Vec::new()));
                        if !res.is_interim() {
                            answered += 1;
                        }
                        (n, res.body())
                    }
                    None => return Ok(false),
                }
            }
        };
        buf.drain(..n);
        let d = BodyDecoder::new(kind, &limits)?;
        body = (!d.is_done()).then_some(d);
        Ok(true)
    };
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match step(&mut buf, &mut out) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            }
        }
    }
    if let Some(Err(e)) = body.map(|mut d| d.finish()) {
        out.error = Some(e);
    }
    out
}

/// `drive` on `input` in one piece, split in two at every boundary, and
/// byte by byte: the same outcome each time, which is returned.
fn every_split(input: &[u8], limits: Limits, methods: Option<&[Method]>) -> Outcome {
    let whole = drive(&[input], limits, methods);
    for k in 0..=input.len() {
        let (a, b) = input.split_at(k);
        assert_eq!(drive(&[a, b], limits, methods), whole, "split at {k}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(drive(&bytes, limits, methods), whole, "byte by byte");
    whole
}

fn requests(input: &[u8]) -> Outcome {
    every_split(input, Limits::default(), None)
}

fn request_error(input: &[u8]) -> HttpError {
    let out = requests(input);
    out.error.unwrap_or_else(|| panic!("accepted: {out:?}"))
}

/// The request head that starts `input`; panics if there is no whole,
/// valid one.
fn request_head(input: &[u8]) -> RequestHead {
    RequestHead::parse(input, &Limits::default())
        .unwrap()
        .unwrap()
        .0
}

/// The response head, answering `method`, that starts `input`; panics if
/// there is no whole, valid one.
fn response_head(input: &[u8], method: Method) -> ResponseHead {
    ResponseHead::parse(input, method, &Limits::default())
        .unwrap()
        .unwrap()
        .0
}

#[test]
fn requests_split_anywhere_parse_the_same() {
    let input =
        b"\r\nGET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-Empty:\r\nAccept:  */*  \r\n\r\n\
        POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
        PUT /c HTTP/1.1\r\nhost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
        3;name=\"q;\\\"x\"\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n\
        GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n\
        GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let out = requests(input);
    assert_eq!(out.error, None);
    let m = &out.messages;
    assert_eq!(m.len(), 5, "{m:?}");
    assert_eq!(
        m[0].0,
        "GET /a?b=1 Http11 [\"Host=example.com\", \"X-Empty=\", \"Accept=*/*\"] body=None keep=true"
    );
    assert!(m[1].0.contains("body=Length(5)"), "{}", m[1].0);
    assert_eq!(m[1].1, b"hello");
    assert!(m[2].0.contains("body=Chunked keep=true"), "{}", m[2].0);
    assert_eq!(m[2].1, b"abc0123456789abcdef");
    assert!(m[3].0.starts_with("GET / Http10") && m[3].0.ends_with("keep=true"));
    assert!(m[4].0.ends_with("keep=false"));
}

#[test]
fn responses_split_anywhere_parse_the_same() {
    let input = b"HTTP/1.1 100 Continue\r\n\r\n\
        HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
        HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n\
        HTTP/1.1 204 No Content\r\n\r\n\
        HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n\
        HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n\
        HTTP/1.0 200 OK\r\n\r\nuntil the end";
    let methods = [
        Method::Post,
        Method::Head,
        Method::Get,
        Method::Get,
        Method::Get,
        Method::Get,
    ];
    let out = every_split(input, Limits::default(), Some(&methods));
    assert_eq!(out.error, None);
    let m = &out.messages;
    assert_eq!(m.len(), 7, "{m:?}");
    assert_eq!(m[0].0, "100 \"Continue\" Http11 0 body=None keep=true");
    assert_eq!(
        (m[1].0.as_str(), &m[1].1[..]),
        ("200 \"OK\" Http11 1 body=Length(3) keep=true", &b"abc"[..])
    );
    // HEAD: the length is the resource's, no body follows.
    assert_eq!(m[2].0, "200 \"OK\" Http11 1 body=None keep=true");
    assert_eq!(m[3].0, "204 \"No Content\" Http11 0 body=None keep=true");
    assert_eq!(m[4].0, "304 \"Not Modified\" Http11 1 body=None keep=true");
    assert_eq!(m[5].1, b"no");
    assert_eq!(m[6].0, "200 \"OK\" Http10 0 body=UntilClose keep=false");
    assert_eq!(m[6].1, b"until the end");
}

#[test]
fn limits_give_414_and_431() {
    let limits = Limits {
        max_request_line: 32,
        max_head: 128,
        max_headers: 3,
        ..Limits::default()
    };
    let long = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(40));
    let e = drive(&[long.as_bytes()], limits, None).error;
    assert_eq!(e, Some(HttpError::UriTooLong));
    // Known before the line ends.
    let e = drive(&[&long.as_bytes()[..40]], limits, None).error;
    assert_eq!(e.map(|e| e.status()), Some(414));
    let big = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
        "v".repeat(120)
    );
    assert_eq!(
        drive(&[big.as_bytes()], limits, None).error,
        Some(HttpError::HeadTooLarge)
    );
    assert_eq!(
        drive(&[&big.as_bytes()[..130]], limits, None).error,
        Some(HttpError::HeadTooLarge)
    );
    let many = b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    let e = drive(&[many], limits, None).error.unwrap();
    assert_eq!((e, e.status()), (HttpError::TooManyHeaders, 431));
    let three = b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n";
    assert_eq!(drive(&[three], limits, None).error, None);
    // A line of exactly the limit passes however it arrives (its CR does
    // not count, found by fuzzing).
    let just = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(18));
    assert_eq!(every_split(just.as_bytes(), limits, None).error, None);
}

#[test]
fn rfc_9112_section_5_violations_are_400() {
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n"[..], // obs-fold
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",              // bare CR
        b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",                        // space before colon
        b"GET / HTTP/1.1\r\nHo(st: h\r\n\r\n",                        // not a token
        b"GET / HTTP/1.1\r\nHost: h\r\nX: \x00\r\n\r\n",              // control char
        b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",                         // method not a token
        b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",                      // space in target
        b"GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n",                 // non-ASCII target
        b"GET a/b HTTP/1.1\r\nHost: h\r\n\r\n",                       // no form
        b"GET / HTTP/1.1\r\n\r\n",                                    // no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",              // two Hosts
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: h\r\n\r\n",
    ] {
        let e = request_error(bad);
        assert_eq!(
            e.status(),
            400,
            "{e:?} for {:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        request_error(b"GET / HTTP/2.0\r\nHost: h\r\n\r\n").status(),
        505
    );
    // Accepted forms: asterisk, absolute, authority.
    for ok in [
        &b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"GET http://h:8080 HTTP/1.1\r\nHost: h:8080\r\n\r\n",
        b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ] {
        assert_eq!(
            requests(ok).error,
            None,
            "{:?}",
            String::from_utf8_lossy(ok)
        );
    }
    let h = request_head(b"GET http://h:8080 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(h.path(), b"/");
    let h = request_head(b"GET http://h/x/y?q HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(h.path(), b"/x/y");
}

#[test]
fn content_length_and_transfer_encoding_follow_section_6() {
    let head = |fields: &str| format!("POST / HTTP/1.1\r\nHost: h\r\n{fields}\r\n");
    let err = |fields: &str| request_error(head(fields).as_bytes());
    assert_eq!(
        err("Content-Length: 1\r\nContent-Length: 2\r\n"),
        HttpError::ContentLength
    );
    assert_eq!(err("Content-Length: 1, 2\r\n"), HttpError::ContentLength);
    assert_eq!(err("Content-Length: -1\r\n"), HttpError::ContentLength);
    assert_eq!(err("Content-Length: 0x10\r\n"), HttpError::ContentLength);
    assert_eq!(err("Content-Length: \r\n"), HttpError::ContentLength);
    assert_eq!(
        err("Content-Length: 99999999999999999999999\r\n"),
        HttpError::ContentLength
    );
    assert_eq!(err("Transfer-Encoding: gzip\r\n").status(), 400);
    assert_eq!(err("Transfer-Encoding: chunked, gzip\r\n").status(), 400);
    assert_eq!(
        err("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n").status(),
        400
    );
    assert_eq!(err("Transfer-Encoding: gzip, chunked\r\n").status(), 501);
    assert_eq!(err("Transfer-Encoding: \r\n").status(), 400);
    // HTTP/1.0 with Transfer-Encoding: faulty framing.
    let e = request_error(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(e, HttpError::TransferEncoding);
    // Equal values repeated are one; chunked in any case.
    let out = requests(head("Content-Length: 2, 2\r\nContent-Length: 2\r\n").as_bytes());
    assert!(out.messages[0].0.contains("body=Length(2)"), "{out:?}");
    let out = requests(
        format!(
            "{}1\r\nx\r\n0\r\n\r\n",
            head("Transfer-Encoding: ChUnKeD\r\n")
        )
        .as_bytes(),
    );
    assert_eq!(out.messages[0].1, b"x");
    // Both: TE wins, the connection closes after.
    let both = format!(
        "{}1\r\nx\r\n0\r\n\r\n",
        head("Content-Length: 100\r\nTransfer-Encoding: chunked\r\n")
    );
    let out = requests(both.as_bytes());
    assert_eq!(out.error, None);
    assert!(
        out.messages[0].0.ends_with("body=Chunked keep=false"),
        "{out:?}"
    );
    // Responses: TE not ending in chunked, or no framing: until close.
    let r = response_head(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        Method::Get,
    );
    assert_eq!((r.body(), r.keep_alive()), (BodyKind::UntilClose, false));
    let e = ResponseHead::parse(
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        Method::Get,
        &Limits::default(),
    );
    assert_eq!(e, Err(HttpError::ContentLength));
    let e = ResponseHead::parse(b"HTTP/1.1 099 Low\r\n\r\n", Method::Get, &Limits::default());
    assert!(matches!(e, Err(HttpError::Malformed(_))));
}

/// A chunked POST whose body is `chunks`, then a pipelined GET.
fn chunked(chunks: &[u8]) -> Vec<u8> {
    let mut v = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    v.extend_from_slice(chunks);
    v.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n");
    v
}

#[test]
fn chunked_edge_cases() {
    // Upper-case hex, leading zeros, BWS before extensions, empty
    // extension values, several trailers.
    let out = requests(&chunked(
        b"0A \t;a;b=\"\"\r\n0123456789\r\n0001\r\n!\r\n000\r\nA: 1\r\nB-2: x y\r\n\r\n",
    ));
    assert_eq!(out.error, None);
    assert_eq!(out.messages[0].1, b"0123456789!");
    assert!(out.messages[1].0.starts_with("GET /next"));
    let chunk_err = |body: &[u8]| request_error(&chunked(body));
    for bad in [
        &b"\r\n"[..],                    // no size
        b"g\r\nx\r\n0\r\n\r\n",          // not hex
        b"5 6\r\nhello\r\n0\r\n\r\n",    // junk after the size
        b"1\nx\r\n0\r\n\r\n",            // bare LF
        b"1\r\nxy\r\n0\r\n\r\n",         // data longer than its size
        b"1\r\nx\n0\r\n\r\n",            // no CR after the data
        b"1;a\x01\r\nx\r\n0\r\n\r\n",    // control char in an extension
        b"1;a=\"x\r\nx\r\n0\r\n\r\n",    // CR inside a quoted string
        b"0\r\nA: 1\r\n folded\r\n\r\n", // obs-fold in the trailers
        b"0\r\nA : 1\r\n\r\n",           // space before the colon
        b"0\r\nA\r\n\r\n",               // no colon
        b"-1\r\n",
        b"10000000000000000\r\n", // 2^64: overflows
    ] {
        let e = chunk_err(bad);
        assert!(
            matches!(e, HttpError::Chunk(_)),
            "{e:?} for {:?}",
            String::from_utf8_lossy(bad)
        );
        assert_eq!(e.status(), 400);
    }
    // Largest size that fits, then the body is cut short.
    let out = drive(
        &[&chunked(b"ffffffffffffffff\r\nabc")[..90]],
        Limits::default(),
        None,
    );
    assert_eq!(out.error, Some(HttpError::Truncated));
    // Line and section bounds.
    let limits = Limits {
        max_chunk_line: 16,
        max_trailers: 16,
        ..Limits::default()
    };
    let long_ext = chunked(b"1;aaaaaaaaaaaaaaaaaaaa\r\nx\r\n0\r\n\r\n");
    assert!(matches!(
        every_split(&long_ext, limits, None).error,
        Some(HttpError::Chunk(_))
    ));
    let zeros = chunked(b"00000000000000000000001\r\nx\r\n0\r\n\r\n");
    assert!(matches!(
        every_split(&zeros, limits, None).error,
        Some(HttpError::Chunk(_))
    ));
    let trailers = chunked(b"0\r\nA: 0123456789abcdef\r\n\r\n");
    assert!(matches!(
        every_split(&trailers, limits, None).error,
        Some(HttpError::Chunk(_))
    ));
    // The body limit, chunked and by length.
    let limits = Limits {
        max_body: 10,
        ..Limits::default()
    };
    let e = every_split(
        &chunked(b"6\r\n012345\r\n5\r\n01234\r\n0\r\n\r\n"),
        limits,
        None,
    )
    .error;
    assert_eq!(e.map(|e| e.status()), Some(413));
    let e = drive(
        &[b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n"],
        limits,
        None,
    )
    .error;
    assert_eq!(e, Some(HttpError::BodyTooLarge));
    // A body until close: the limit's worth, then the error, however cut
    // (found by fuzzing).
    let out = every_split(b"HTTP/1.1 200 OK\r\n\r\n0123456789abc", limits, Some(&[]));
    assert_eq!(
        (&out.messages[0].1[..], out.error),
        (&b"0123456789"[..], Some(HttpError::BodyTooLarge))
    );
}

#[test]
fn the_decoder_never_takes_the_next_messages_bytes() {
    let mut d = BodyDecoder::new(BodyKind::Length(3), &Limits::default()).unwrap();
    let got = d.decode(b"abcGET").unwrap();
    assert_eq!((got.consumed, got.data), (3, 0..3));
    assert!(d.is_done());
    assert_eq!(d.decode(b"GET").unwrap().consumed, 0);
    let mut d = BodyDecoder::new(BodyKind::Chunked, &Limits::default()).unwrap();
    let input = b"2\r\nab\r\n0\r\n\r\nGET";
    let (mut at, mut data) = (0, Vec::new());
    while !d.is_done() {
        let got = d.decode(&input[at..]).unwrap();
        data.extend_from_slice(&input[at..][got.data]);
        at += got.consumed;
    }
    assert_eq!((&data[..], &input[at..]), (&b"ab"[..], &b"GET"[..]));
    assert_eq!(d.data_bytes(), 2);
    let mut d = BodyDecoder::new(BodyKind::Length(3), &Limits::default()).unwrap();
    d.decode(b"ab").unwrap();
    assert_eq!(
        (d.remaining(), d.finish()),
        (Some(1), Err(HttpError::Truncated))
    );
}

#[test]
fn chunk_encoding_round_trips() {
    let mut h = [0; CHUNK_HEADER_MAX];
    for (len, want) in [
        (1, "1\r\n"),
        (15, "f\r\n"),
        (255, "ff\r\n"),
        (4096, "1000\r\n"),
    ] {
        let n = chunk_header(len, &mut h);
        assert_eq!(&h[..n], want.as_bytes());
    }
    let n = chunk_header(usize::MAX, &mut h);
    assert_eq!(&h[..n], b"ffffffffffffffff\r\n");
    let mut wire = Vec::new();
    let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    for piece in data.chunks(777) {
        encode_chunk(piece, &mut wire);
    }
    encode_chunk(b"", &mut wire);
    wire.extend_from_slice(LAST_CHUNK);
    let mut d = BodyDecoder::new(BodyKind::Chunked, &Limits::default()).unwrap();
    let (mut at, mut got) = (0, Vec::new());
    while !d.is_done() {
        let step = d.decode(&wire[at..]).unwrap();
        got.extend_from_slice(&wire[at..][step.data]);
        at += step.consumed;
    }
    assert_eq!((got, at), (data, wire.len()));
}

#[test]
fn chunks_written_into_a_fixed_buffer_fit_it() {
    let data = [7u8; 300];
    let mut out = [0u8; 262];
    // 0x100 bytes: a 5-byte header, the data, CRLF = 263; 0xff fits.
    assert_eq!(encode_chunk_into(&data, &mut out), (255, 261));
    assert_eq!(&out[..4], b"ff\r\n");
    assert_eq!(&out[259..261], b"\r\n");
    assert_eq!(encode_chunk_into(&data, &mut out[..6]), (1, 6));
    assert_eq!(encode_chunk_into(&data, &mut out[..5]), (0, 0));
    assert_eq!(encode_chunk_into(b"", &mut out), (0, 0));
    let mut d = BodyDecoder::new(BodyKind::Chunked, &Limits::default()).unwrap();
    let (n, w) = encode_chunk_into(&data[..10], &mut out);
    let got = d.decode(&out[..w]).unwrap();
    assert_eq!((n, got.consumed, got.data.len()), (10, w - 2, 10));
}

#[test]
fn connection_semantics() {
    let parse = |s: &str| request_head(s.as_bytes());
    assert!(parse("GET / HTTP/1.1\r\nHost: h\r\n\r\n").keep_alive());
    assert!(!parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, Close\r\n\r\n").keep_alive());
    assert!(!parse("GET / HTTP/1.0\r\n\r\n").keep_alive());
    assert!(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
    let h = parse(
        "GET / HTTP/1.1\r\nHost: h\r\nConnection: x-secret, upgrade\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Kept: 2\r\n\r\n",
    );
    let f = h.fields();
    for hop in [
        "Connection",
        "x-secret",
        "KEEP-ALIVE",
        "te",
        "Upgrade",
        "Proxy-Connection",
        "Trailer",
        "Transfer-Encoding",
    ] {
        assert!(f.is_hop_by_hop(hop.as_bytes()), "{hop}");
    }
    assert!(!f.is_hop_by_hop(b"x-kept") && !f.is_hop_by_hop(b"host"));
    assert!(
        parse("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
            .expects_continue()
    );
}

#[test]
fn heads_are_forwarded_with_fields_rewritten() {
    let input = "POST /p?q HTTP/1.0\r\nHost: h\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
                 Transfer-Encoding: chunked\r\nContent-Length: 9\r\nCookie: c\r\nVia: 1.0 a\r\n\
                 X-Forwarded-For: 192.0.2.1\r\n\r\n";
    // An HTTP/1.0 request with TE is refused; the same fields in 1.1 are
    // forwarded.
    assert!(RequestHead::parse(input.as_bytes(), &Limits::default()).is_err());
    let input = input.replace("HTTP/1.0", "HTTP/1.1");
    let h = request_head(input.as_bytes());
    let client: IpAddr = "2001:db8::7".parse().unwrap();
    let xff = x_forwarded_for(h.fields(), client);
    assert_eq!(xff, b"192.0.2.1, 2001:db8::7");
    let fwd = forwarded(
        h.fields(),
        client,
        Some("10.0.0.1".parse().unwrap()),
        Some("http"),
        Some(b"h:80"),
    );
    assert_eq!(
        fwd,
        b"for=\"[2001:db8::7]\";by=10.0.0.1;proto=http;host=\"h:80\""
    );
    let v = via(h.fields(), h.version(), "shmnet");
    assert_eq!(v, b"1.0 a, 1.1 shmnet");
    let mut out = Vec::new();
    let rw = Rewrite {
        remove: &[b"cookie", b"via", b"x-forwarded-for"],
        add: &[
            (b"Via", &v),
            (b"X-Forwarded-For", &xff),
            (b"Transfer-Encoding", b"chunked"),
        ],
        ..Rewrite::default()
    };
    h.emit_with_target(b"/p", &rw, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /p HTTP/1.1\r\nHost: h\r\nVia: 1.0 a, 1.1 shmnet\r\n\
         X-Forwarded-For: 192.0.2.1, 2001:db8::7\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    // Content-Length goes with Transfer-Encoding even when TE does not
    // end in chunked (found by fuzzing: the body ends with the connection).
    let te = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: x\r\nContent-Length: '2\r\nA: 1\r\n\r\n";
    let r = response_head(te, Method::Get);
    let mut out = Vec::new();
    r.emit(&Rewrite::default(), &mut out);
    assert_eq!(out, b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\n");
    // Keeping hop-by-hop fields is possible; the response side too.
    let r = response_head(
        b"HTTP/1.1 201 Made\r\nKeep-Alive: 1\r\nETag: x\r\n\r\n",
        Method::Post,
    );
    let mut out = Vec::new();
    r.emit(&Rewrite::default(), &mut out);
    assert_eq!(out, b"HTTP/1.1 201 Made\r\nETag: x\r\n\r\n");
    out.clear();
    r.emit(
        &Rewrite {
            keep_hop_by_hop: true,
            ..Rewrite::default()
        },
        &mut out,
    );
    assert_eq!(
        out,
        b"HTTP/1.1 201 Made\r\nKeep-Alive: 1\r\nETag: x\r\n\r\n"
    );
}

#[test]
fn error_responses_are_complete_and_close() {
    for status in [400, 403, 404, 413, 414, 429, 431, 502, 503, 504] {
        let mut out = Vec::new();
        error_response(status, Some(7), &mut out);
        let (r, n) = ResponseHead::parse(&out, Method::Get, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(r.status(), status);
        assert_eq!(r.reason(), reason(status).as_bytes());
        assert!(!r.keep_alive());
        let BodyKind::Length(len) = r.body() else {
            panic!("{:?}", r.body())
        };
        assert_eq!(out.len() - n, len as usize);
        assert!(out[n..].starts_with(status.to_string().as_bytes()));
        let retry = r.fields().get(b"retry-after");
        assert_eq!(
            retry,
            matches!(status, 429 | 503).then_some(&b"7"[..]),
            "{status}"
        );
    }
}
