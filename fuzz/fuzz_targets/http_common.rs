//! What the two HTTP targets share: a connection's byte stream fed to the
//! codec in pieces, as a server or proxy reads it, with the invariants
//! checked on every step. Input: `[cut][flags][stream…]`; `cut` sets the
//! piece size (0: the whole stream at once), `flags` bit 0 picks tight
//! limits, the other bits the request methods responses answer.

use shmnet::functions::http::codec::{
    BodyDecoder, HeadParser, HttpError, Limits, Method, RequestHead, ResponseHead, Rewrite,
};

/// What a stream came to: a summary of each head, each body's length,
/// the error that ended it.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub heads: Vec<String>,
    pub bodies: Vec<u64>,
    pub error: Option<HttpError>,
}

pub fn limits(flags: u8) -> Limits {
    if flags & 1 == 0 {
        return Limits::default();
    }
    Limits {
        max_request_line: 64,
        max_head: 256,
        max_headers: 8,
        max_chunk_line: 32,
        max_trailers: 64,
        max_body: 1024,
    }
}

/// The method of the `i`th request a response answers.
fn method(flags: u8, i: usize) -> Method {
    const M: [Method; 4] = [Method::Get, Method::Head, Method::Post, Method::Connect];
    M[usize::from(flags >> (1 + 2 * (i % 3))) & 3]
}

/// Feeds `stream` in pieces of `cut` bytes (all at once for 0) to a
/// request parser, or a response parser if `responses`.
pub fn drive(stream: &[u8], cut: usize, flags: u8, responses: bool) -> Outcome {
    let limits = limits(flags);
    let mut parser = HeadParser::new(limits);
    let (mut req, mut res) = (RequestHead::default(), ResponseHead::default());
    let mut out = Outcome {
        heads: Vec::new(),
        bodies: Vec::new(),
        error: None,
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut body: Option<BodyDecoder> = None;
    let mut answered = 0;
    let mut decoded = 0u64;
    let cut = if cut == 0 { stream.len().max(1) } else { cut };
    for piece in stream.chunks(cut) {
        buf.extend_from_slice(piece);
        loop {
            let step: Result<bool, HttpError> = (|| {
                if let Some(d) = &mut body {
                    let got = d.decode(&buf)?;
                    assert!(got.consumed <= buf.len(), "consumed more than given");
                    assert!(got.data.start <= got.data.end && got.data.end <= got.consumed);
                    decoded += got.data.len() as u64;
                    *out.bodies.last_mut().unwrap() += got.data.len() as u64;
                    buf.drain(..got.consumed);
                    if d.is_done() {
                        body = None;
                    }
                    return Ok(got.consumed > 0);
                }
                let (n, kind) = if responses {
                    let m = method(flags, answered);
                    let Some(n) = parser.parse_response(&buf, m, &mut res)? else {
                        return Ok(false);
                    };
                    answered += usize::from(!res.is_interim());
                    out.heads.push(format!(
                        "{} {:?} {:?} {} {:?} {}",
                        res.status(),
                        res.reason(),
                        res.version(),
                        res.fields().len(),
                        res.body(),
                        res.keep_alive()
                    ));
                    // A head forwarded as a proxy would parses again.
                    let mut again = Vec::new();
                    res.emit(&Rewrite::default(), &mut again);
                    let back = ResponseHead::parse(&again, m, &Limits::default());
                    assert!(
                        matches!(back, Ok(Some((_, k))) if k == again.len()),
                        "{again:?}"
                    );
                    (n, res.body())
                } else {
                    let Some(n) = parser.parse_request(&buf, &mut req)? else {
                        return Ok(false);
                    };
                    out.heads.push(format!(
                        "{:?} {:?} {:?} {} {:?} {}",
                        req.method_bytes(),
                        req.target(),
                        req.version(),
                        req.fields().len(),
                        req.body(),
                        req.keep_alive()
                    ));
                    let mut again = Vec::new();
                    req.emit(&Rewrite::default(), &mut again);
                    // (Unless it lost its Host: HTTP/1.0 needs none, and a
                    // Connection field may name it.)
                    match RequestHead::parse(&again, &Limits::default()) {
                        Ok(Some((h, k))) => assert_eq!(
                            (k, h.method_bytes(), h.target()),
                            (again.len(), req.method_bytes(), req.target())
                        ),
                        Err(HttpError::Malformed(why)) if why.contains("Host") => {}
                        other => panic!("{other:?} for {again:?}"),
                    }
                    (n, req.body())
                };
                assert!(n <= buf.len(), "a head longer than the input");
                buf.drain(..n);
                out.bodies.push(0);
                let d = BodyDecoder::new(kind, &limits)?;
                body = (!d.is_done()).then_some(d);
                Ok(true)
            })();
            match step {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            }
        }
    }
    assert!(decoded <= stream.len() as u64, "more body than input");
    if let Some(Err(e)) = body.map(|mut d| d.finish()) {
        out.error = Some(e);
    }
    out
}

/// Runs `stream` whole and in pieces: the same outcome.
pub fn check(data: &[u8], responses: bool) {
    let [cut, flags, stream @ ..] = data else {
        return;
    };
    let whole = drive(stream, 0, *flags, responses);
    let pieces = drive(stream, usize::from(*cut % 64) + 1, *flags, responses);
    assert_eq!(whole, pieces);
}
