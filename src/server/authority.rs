//! Accepting gRPC clients that name a unix socket as the request's `:authority`.
//!
//! Over a unix socket Go clients (kubelet, the CSI sidecars) send `:authority: localhost`, but
//! grpcio (Python, C++) sends the percent-encoded socket path (`tmp%2Fcsi.sock`), and others
//! send the path itself. The HTTP/2 server under tonic (h2) refuses every such request with
//! `RST_STREAM(PROTOCOL_ERROR)` before any handler runs, because the value is not a valid URI
//! authority; no server option turns that check off. A CSI endpoint must serve any well-formed
//! client, so the plugin rewrites the client's header blocks on the way in: every header block
//! (HEADERS and its CONTINUATION frames) is decoded with the client's HPACK context, an
//! `:authority` that is not a valid authority becomes `localhost`, and the block is encoded
//! again with a context of our own towards the server. Every other frame passes byte for byte;
//! what the server writes is not touched.
//!
//! A header block the client encoded wrongly is passed on as it came, so h2 answers it as it
//! would have (a connection error).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame h2 accepts unless it advertised more (SETTINGS_MAX_FRAME_SIZE default).
const MAX_FRAME: usize = 16_384;
/// A header block larger than this is not buffered: the connection fails (h2's own limit on a
/// header list is 16 KiB by default, so no legitimate request comes near it).
const MAX_BLOCK: usize = 1 << 20;
/// The authority given to requests whose own is not one.
const LOCALHOST: &[u8] = b"localhost";

/// A header block waiting for its CONTINUATION frames.
struct Pending {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

/// The inbound half of a connection, frame by frame: pure, no I/O.
pub struct Rewriter {
    preface_left: usize,
    input: Vec<u8>,
    pending: Option<Pending>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter {
            preface_left: PREFACE_LEN,
            input: Vec::new(),
            pending: None,
            decoder: Decoder::new(),
            encoder: Encoder::new(),
            rewritten: 0,
        }
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

impl Rewriter {
    /// How many requests had their authority replaced.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Takes bytes read from the client and appends what the server should read to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        self.input.extend_from_slice(bytes);
        let mut pos = 0;
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.input.len());
            out.extend_from_slice(&self.input[..n]);
            self.preface_left -= n;
            pos = n;
        }
        while self.preface_left == 0 && self.input.len() - pos >= FRAME_HEADER_LEN {
            let h = &self.input[pos..pos + FRAME_HEADER_LEN];
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let (kind, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let end = pos + FRAME_HEADER_LEN + len;
            if self.input.len() < end {
                if len > MAX_BLOCK {
                    return Err(invalid("an HTTP/2 frame larger than 1 MiB"));
                }
                break;
            }
            let frame = &self.input[pos..end];
            let payload = &frame[FRAME_HEADER_LEN..];
            let handled = match (kind, &mut self.pending) {
                (HEADERS, None) => match split_headers(flags, payload) {
                    Some((priority, fragment)) => {
                        let pending = Pending {
                            stream,
                            end_stream: flags & END_STREAM != 0,
                            priority,
                            block: fragment.to_vec(),
                        };
                        if flags & END_HEADERS != 0 {
                            Self::finish(
                                &mut self.decoder,
                                &mut self.encoder,
                                &mut self.rewritten,
                                pending,
                                out,
                            );
                        } else {
                            self.pending = Some(pending);
                        }
                        true
                    }
                    None => false,
                },
                (CONTINUATION, Some(p)) if p.stream == stream => {
                    if p.block.len() + payload.len() > MAX_BLOCK {
                        return Err(invalid("an HTTP/2 header block larger than 1 MiB"));
                    }
                    p.block.extend_from_slice(payload);
                    if flags & END_HEADERS != 0
                        && let Some(pending) = self.pending.take()
                    {
                        Self::finish(
                            &mut self.decoder,
                            &mut self.encoder,
                            &mut self.rewritten,
                            pending,
                            out,
                        );
                    }
                    true
                }
                _ => false,
            };
            if !handled {
                // Not a header block, or a protocol error h2 will name itself.
                out.extend_from_slice(frame);
            }
            pos = end;
        }
        self.input.drain(..pos);
        Ok(())
    }

    /// Re-encodes a complete header block. A block the client's encoding cannot be decoded
    /// from is passed on as it came, in one HEADERS frame, for the server to refuse.
    fn finish(
        decoder: &mut Decoder<'static>,
        encoder: &mut Encoder<'static>,
        rewritten: &mut u64,
        pending: Pending,
        out: &mut Vec<u8>,
    ) {
        let passthrough = |pending: &Pending, out: &mut Vec<u8>| {
            let flags = END_HEADERS | if pending.end_stream { END_STREAM } else { 0 };
            frame_header(out, pending.block.len(), HEADERS, flags, pending.stream);
            out.extend_from_slice(&pending.block);
        };
        let Ok(mut headers) = decoder.decode(&pending.block) else {
            passthrough(&pending, out);
            return;
        };
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(value.as_slice()).is_err()
            {
                *value = LOCALHOST.to_vec();
                *rewritten += 1;
            }
        }
        let mut block = Vec::new();
        if encoder
            .encode_into(
                headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
                &mut block,
            )
            .is_err()
        {
            // Writing to a Vec does not fail; were it to, the server still gets the request.
            passthrough(&pending, out);
            return;
        }
        let first_room = MAX_FRAME - if pending.priority.is_some() { 5 } else { 0 };
        let (first, mut rest) = block.split_at(block.len().min(first_room));
        let mut flags = 0;
        if pending.end_stream {
            flags |= END_STREAM;
        }
        if pending.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let prio_len = pending.priority.map_or(0, |_| 5);
        frame_header(out, first.len() + prio_len, HEADERS, flags, pending.stream);
        if let Some(p) = pending.priority {
            out.extend_from_slice(&p);
        }
        out.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            let flags = if tail.is_empty() { END_HEADERS } else { 0 };
            frame_header(out, chunk.len(), CONTINUATION, flags, pending.stream);
            out.extend_from_slice(chunk);
            rest = tail;
        }
    }
}

/// The priority fields and the header block fragment of a HEADERS payload (padding removed);
/// `None` when the padding does not fit (a protocol error left to h2).
fn split_headers(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut p = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    let priority = if flags & PRIORITY != 0 {
        let fields: [u8; 5] = p.get(..5)?.try_into().ok()?;
        p = &p[5..];
        Some(fields)
    } else {
        None
    };
    let fragment = p.get(..p.len().checked_sub(pad)?)?;
    Some((priority, fragment))
}

/// A server-side connection whose inbound header blocks go through a [`Rewriter`].
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    ready: Vec<u8>,
    offset: usize,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            rewriter: Rewriter::default(),
            ready: Vec::new(),
            offset: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.offset < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.offset);
                buf.put_slice(&this.ready[this.offset..this.offset + n]);
                this.offset += n;
                if this.offset == this.ready.len() {
                    this.ready.clear();
                    this.offset = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut raw = [0u8; 8192];
            let mut raw_buf = ReadBuf::new(&mut raw);
            match Pin::new(&mut this.inner).poll_read(cx, &mut raw_buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if raw_buf.filled().is_empty() => {
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => {
                    this.rewriter.feed(raw_buf.filled(), &mut this.ready)?;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_header(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out
    }

    /// Splits `bytes` (after the preface) into frames: (kind, flags, stream, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut p = &bytes[PREFACE_LEN..];
        while !p.is_empty() {
            let len = u32::from_be_bytes([0, p[0], p[1], p[2]]) as usize;
            let stream = u32::from_be_bytes([p[5], p[6], p[7], p[8]]);
            out.push((p[3], p[4], stream, p[9..9 + len].to_vec()));
            p = &p[9 + len..];
        }
        out
    }

    fn request(authority: &[u8], extra: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (
                b":path".to_vec(),
                b"/csi.v1.Identity/GetPluginInfo".to_vec(),
            ),
            (b":authority".to_vec(), authority.to_vec()),
            (b"content-type".to_vec(), b"application/grpc".to_vec()),
            (b"x-big".to_vec(), vec![b'a'; extra]),
        ]
    }

    fn encode(enc: &mut Encoder<'static>, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        enc.encode_into(
            headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
            &mut out,
        )
        .expect("encode");
        out
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_and_the_rest_passes_byte_for_byte() {
        let mut client = Encoder::new();
        let mut input = PREFACE.to_vec();
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        input.extend(&settings);
        // A padded HEADERS with priority, its block split over a CONTINUATION.
        let block = encode(&mut client, &request(b"tmp%2Fpy%2Fcsi.sock", 10));
        let (a, b) = block.split_at(block.len() / 2);
        let mut payload = vec![3u8];
        payload.extend([0, 0, 0, 0, 16]);
        payload.extend(a);
        payload.extend([0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        let data = frame(0x0, END_STREAM, 1, b"\0\0\0\0\0");
        input.extend(&data);
        // A second request reuses the client's dynamic table; its authority is valid.
        let second = encode(&mut client, &request(b"localhost:50051", 20_000));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));

        // Fed a byte at a time, as a slow socket would.
        let mut rewriter = Rewriter::default();
        let mut out = Vec::new();
        for byte in &input {
            rewriter
                .feed(std::slice::from_ref(byte), &mut out)
                .expect("feed");
        }
        assert_eq!(&out[..PREFACE_LEN], PREFACE);
        let got = frames(&out);
        assert_eq!(
            got[0],
            (0x4, 0, 0, settings[9..].to_vec()),
            "settings untouched"
        );
        let mut server = Decoder::new();
        // First request: one HEADERS frame with its priority fields and no padding.
        let (kind, flags, stream, payload) = &got[1];
        assert_eq!((*kind, *stream), (HEADERS, 1));
        assert_eq!(*flags, PRIORITY | END_HEADERS);
        assert_eq!(&payload[..5], &[0, 0, 0, 0, 16]);
        let headers = server.decode(&payload[5..]).expect("server decodes");
        assert_eq!(headers, request(b"localhost", 10));
        assert_eq!(
            got[2],
            (0x0, END_STREAM, 1, data[9..].to_vec()),
            "data untouched"
        );
        // Second request: over 16 KiB, so split into HEADERS + CONTINUATION again.
        let mut block = got[3].3.clone();
        assert_eq!((got[3].0, got[3].1), (HEADERS, END_STREAM));
        assert_eq!((got[4].0, got[4].1), (CONTINUATION, END_HEADERS));
        assert!(got[3].3.len() <= MAX_FRAME);
        block.extend(&got[4].3);
        let headers = server.decode(&block).expect("server decodes");
        assert_eq!(headers, request(b"localhost:50051", 20_000));
        assert_eq!(rewriter.rewritten(), 1);
    }

    #[test]
    fn a_block_the_client_encoded_wrongly_reaches_the_server_as_it_came() {
        let mut input = PREFACE.to_vec();
        // Index 200 is in neither table.
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0x80 | 0x7f, 0x49]));
        let mut out = Vec::new();
        Rewriter::default().feed(&input, &mut out).expect("feed");
        let got = frames(&out);
        assert_eq!(
            got,
            vec![(HEADERS, END_HEADERS, 1, vec![0x80 | 0x7f, 0x49])]
        );
    }
}
