//! The error type of [`fastmmap::perl`](crate::perl).

use std::fmt::Display;

use crate::perl::Compressor;

/// Everything that can go wrong reading or writing Perl's values.
///
/// A decoder never panics on bad input: every problem with the bytes is one of these, with the
/// byte offset where it was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a well-formed Storable image.
    #[error("malformed Storable image at byte {offset}: {reason}")]
    Malformed {
        /// Where in the image the problem was found.
        offset: usize,
        /// What is wrong.
        reason: String,
    },

    /// The image is well formed but holds something this crate does not read: code
    /// references, tied variables, regular
    /// expressions, v-strings, restricted (locked) hashes, images of a Perl with long
    /// doubles or an unknown byte order, and images from before Storable 0.7.
    #[error("unsupported Storable data at byte {offset}: {what}")]
    Unsupported {
        /// Where in the image it starts.
        offset: usize,
        /// What it is.
        what: String,
    },

    /// The data nests deeper than a Rust value may (checked while deserializing into a Rust
    /// type, which recurses; [`PerlData`](crate::perl::PerlData) itself has no depth limit).
    #[error("Perl data nested more than {limit} levels deep")]
    TooDeep {
        /// The limit.
        limit: usize,
    },

    /// Deserializing copies shared values once per place they are used; these data would
    /// make more values, or more bytes of strings, than the limit (a small image can describe
    /// a huge tree this way).
    #[error("Perl data expand to more than {limit} {unit} when shared values are copied")]
    TooLarge {
        /// The limit.
        limit: usize,
        /// What it counts: `values`, or `bytes of strings` (strings and hash keys).
        unit: &'static str,
    },

    /// Appending one [`PerlData`](crate::perl::PerlData) to another
    /// ([`PerlData::append`](crate::perl::PerlData::append)) would make more values than its
    /// ids can number. Nothing was added.
    #[error("Perl data would hold more than {limit} values")]
    TooManyValues {
        /// The limit ([`PerlData::MAX_VALUES`](crate::perl::PerlData::MAX_VALUES)).
        limit: usize,
    },

    /// The data refer to themselves (`$h->{self} = $h`), which a Rust value cannot hold.
    /// [`PerlData`](crate::perl::PerlData) can.
    #[error("Perl data contain a cycle of references, which a Rust value cannot hold")]
    Cyclic,

    /// A [`PerlData`](crate::perl::PerlData) that cannot be frozen: an id that is not in it,
    /// an array or hash stored directly in another, or a key twice in one hash.
    #[error("cannot freeze this Perl data: {0}")]
    InvalidData(String),

    /// A value does not fit the Rust type asked for, or a Rust value cannot be written as Perl
    /// data (for example a map whose keys are not strings or numbers); or the message of a
    /// `Serialize` / `Deserialize` implementation.
    #[error("{0}")]
    Data(String),

    /// A `serializer => 'json'` value is not valid JSON for the type asked for, or a value
    /// cannot be written as JSON.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),

    /// Compressed bytes that the compressor's format cannot decode.
    #[error("corrupt {compressor} data: {reason}")]
    Decompress {
        /// The compressor.
        compressor: Compressor,
        /// What is wrong.
        reason: String,
    },

    /// The cache underneath failed.
    #[error(transparent)]
    Cache(#[from] crate::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl serde::ser::Error for Error {
    fn custom<T: Display>(msg: T) -> Error {
        Error::Data(msg.to_string())
    }
}

impl serde::de::Error for Error {
    fn custom<T: Display>(msg: T) -> Error {
        Error::Data(msg.to_string())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_is_send_sync_static() {
        fn check<T: Send + Sync + 'static + std::error::Error>() {}
        check::<super::Error>();
    }
}
