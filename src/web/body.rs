//! [`SessionBody`]: the response body [`SessionLayer`](crate::web::SessionLayer) sends — the
//! inner service's body as it was, a body rewritten whole, or one rewritten as it streams.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::session::PageStream;

/// The error type of a [`SessionBody`]: the inner body's error, or the HTML rewriter's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// The body of a response that went through [`SessionLayer`](crate::web::SessionLayer).
    pub struct SessionBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        // The inner body, untouched.
        Plain { #[pin] body: B },
        // A whole body (rewritten, or made by the layer).
        Full { data: Option<Bytes> },
        // The inner body, through the HTML rewriter.
        Rewriting {
            #[pin]
            body: B,
            stream: Option<PageStream>,
            trailers: Option<HeaderMap>,
        },
        // Reading the inner body failed before anything was sent.
        Failed { error: Option<BoxError> },
    }
}

impl<B> SessionBody<B> {
    pub(crate) fn plain(body: B) -> Self {
        SessionBody {
            kind: Kind::Plain { body },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        SessionBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn rewriting(body: B, stream: PageStream) -> Self {
        SessionBody {
            kind: Kind::Rewriting {
                body,
                stream: Some(stream),
                trailers: None,
            },
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        SessionBody {
            kind: Kind::Failed { error: Some(error) },
        }
    }
}

impl<B> std::fmt::Debug for SessionBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Plain { .. } => "plain",
            Kind::Full { .. } => "full",
            Kind::Rewriting { .. } => "rewriting",
            Kind::Failed { .. } => "failed",
        };
        f.debug_struct("SessionBody").field("kind", &kind).finish()
    }
}

impl<B> Body for SessionBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Plain { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Failed { error } => Poll::Ready(error.take().map(Err)),
            KindProj::Rewriting {
                mut body,
                stream,
                trailers,
            } => loop {
                let Some(rewriter) = stream.as_mut() else {
                    return Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))));
                };
                let frame = match ready!(body.as_mut().poll_frame(cx)) {
                    Some(Ok(frame)) => frame,
                    Some(Err(e)) => {
                        *stream = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    None => {
                        let last = stream.take().map_or(Ok(Vec::new()), PageStream::end);
                        return Poll::Ready(match last {
                            Ok(last) if last.is_empty() => None,
                            Ok(last) => Some(Ok(Frame::data(Bytes::from(last)))),
                            Err(e) => Some(Err(e.into())),
                        });
                    }
                };
                match frame.into_data() {
                    Ok(data) => match rewriter.write(&data) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(e) => {
                            *stream = None;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    },
                    Err(frame) => {
                        // Trailers end the body: flush the rewriter, then send them.
                        *trailers = frame.into_trailers().ok();
                        let last = stream.take().map_or(Ok(Vec::new()), PageStream::end);
                        match last {
                            Ok(last) if last.is_empty() => continue,
                            Ok(last) => {
                                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(last)))));
                            }
                            Err(e) => return Poll::Ready(Some(Err(e.into()))),
                        }
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Plain { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
            Kind::Failed { error } => error.is_none(),
            Kind::Rewriting { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Plain { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Failed { .. } => SizeHint::with_exact(0),
            Kind::Rewriting { .. } => SizeHint::default(),
        }
    }
}
