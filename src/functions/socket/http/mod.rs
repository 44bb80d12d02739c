//! HTTP/1.1: the sans-IO message codec ([`codec`]) that the HTTP functions
//! share, and the static HTTP server function ([`server`], `kind =
//! "http-server"`), a backend for examples, tests and benchmarks.

pub mod codec;
pub mod proxy;
pub mod server;

pub use proxy::{HttpProxy, HttpProxyConfig};
pub use server::{HttpServer, HttpServerConfig, Route};

/// The responses in `bytes`, answering requests of `methods` in order
/// (GET past their end): each head and its body, as the proxy's and the
/// server's tests read them back. A body that ends with the connection is
/// what is left; a malformed or incomplete response panics.
#[cfg(test)]
fn responses(mut bytes: &[u8], methods: &[codec::Method]) -> Vec<(codec::ResponseHead, Vec<u8>)> {
    use codec::{BodyDecoder, Limits, Method, ResponseHead};
    let mut out = Vec::new();
    let mut methods = methods.iter();
    while !bytes.is_empty() {
        let method = *methods.next().unwrap_or(&Method::Get);
        let (head, n) = ResponseHead::parse(bytes, method, &Limits::default())
            .expect("a valid response")
            .expect("a whole head");
        bytes = &bytes[n..];
        let mut body = BodyDecoder::new(head.body(), &Limits::default()).unwrap();
        let mut data = Vec::new();
        while !body.is_done() {
            let d = body.decode(bytes).expect("a valid body");
            data.extend_from_slice(&bytes[d.data.clone()]);
            bytes = &bytes[d.consumed..];
            if d.consumed == 0 {
                body.finish().expect("a body that ends with the connection");
                break;
            }
        }
        out.push((head, data));
    }
    out
}
