//! The one body type of the data path, boxed so that every layer has the same
//! type and the stack compiles quickly.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Any request or response body on the data path.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> BoxBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn full(b: Bytes) -> BoxBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

/// Boxes a hyper body.
pub fn boxed<B>(b: B) -> BoxBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}
