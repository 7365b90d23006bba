//! Errors that decide the HTTP status: a [`Rejection`] is the client's fault (4xx, nothing
//! published); an [`Unavailable`] is ours or Kafka's (503, WeChat retries).

use hyper::StatusCode;

use wechat::parse::ParseError;

/// Bad input: a 4xx with a short reason. Nothing is published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("missing query parameter `{0}`")]
    MissingParam(&'static str),
    #[error("bad signature")]
    BadSignature,
    #[error("timestamp outside the replay window")]
    StaleTimestamp,
    #[error("timestamp and nonce already used with another body")]
    ReplayedNonce,
    #[error("decryption failed: {0}")]
    Decrypt(#[from] wechat::decrypt::CryptoError),
    #[error("encrypted push, but this account has no EncodingAESKey")]
    NoAesKey,
    #[error("push is addressed to another account")]
    WrongAccount,
    #[error("the authorizer withdrew its authorization of the component")]
    Unauthorized,
    #[error(
        "plaintext push to an account with an EncodingAESKey (WeChat encrypts every push for it)"
    )]
    PlaintextRefused,
    #[error("CreateTime is more than 60 s ahead of the signed timestamp")]
    CreateTimeAhead,
    #[error("source address not allowed")]
    SourceNotAllowed,
    #[error("malformed push: {0}")]
    Malformed(#[from] ParseError),
    #[error("body over {0} bytes")]
    TooLarge(usize),
    #[error("body not received in time")]
    BodyTimeout,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("not found")]
    NotFound,
}

impl From<wechat::VerifyError> for Rejection {
    fn from(error: wechat::VerifyError) -> Self {
        match error {
            wechat::VerifyError::BadSignature => Rejection::BadSignature,
            wechat::VerifyError::StaleTimestamp => Rejection::StaleTimestamp,
        }
    }
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::MissingParam(_) | Rejection::Malformed(_) => StatusCode::BAD_REQUEST,
            Rejection::BadSignature
            | Rejection::StaleTimestamp
            | Rejection::ReplayedNonce
            | Rejection::Decrypt(_)
            | Rejection::NoAesKey
            | Rejection::WrongAccount
            | Rejection::Unauthorized
            | Rejection::PlaintextRefused
            | Rejection::CreateTimeAhead
            | Rejection::SourceNotAllowed => StatusCode::FORBIDDEN,
            Rejection::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::NotFound => StatusCode::NOT_FOUND,
        }
    }

    /// A label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::MissingParam(_) => "missing_param",
            Rejection::BadSignature => "bad_signature",
            Rejection::StaleTimestamp => "stale_timestamp",
            Rejection::ReplayedNonce => "replayed_nonce",
            Rejection::Decrypt(_) => "decrypt_failed",
            Rejection::NoAesKey => "no_aes_key",
            Rejection::WrongAccount => "wrong_account",
            Rejection::Unauthorized => "unauthorized",
            Rejection::PlaintextRefused => "plaintext_refused",
            Rejection::CreateTimeAhead => "create_time_ahead",
            Rejection::SourceNotAllowed => "source_not_allowed",
            Rejection::Malformed(_) => "malformed",
            Rejection::TooLarge(_) => "too_large",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::NotFound => "not_found",
        }
    }
}

/// The push could not be made durable in time: 503, so WeChat retries.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("an earlier attempt of this push is in flight")]
    InFlight,
    #[error("kafka did not take the event: {0}")]
    Publish(#[from] crate::publish::PublishError),
    #[error("kafka did not confirm the event within the ack deadline")]
    Deadline,
    #[error("too many pushes in flight")]
    Overloaded,
    /// The Open Platform component's state (an authorization, a ticket, an authorizer's
    /// admission) could not be read or recorded: the push is not taken without it.
    #[error("the component store did not answer: {0}")]
    ComponentStore(#[from] store::StoreError),

    #[error("kafka unavailable and the spool refused: {0}")]
    Spool(#[from] crate::spool::SpoolError),
}

impl Unavailable {
    pub fn reason(&self) -> &'static str {
        match self {
            Unavailable::InFlight => "in_flight",
            Unavailable::Publish(_) => "publish_failed",
            Unavailable::Deadline => "deadline",
            Unavailable::Overloaded => "overloaded",
            Unavailable::ComponentStore(_) => "component_store",
            Unavailable::Spool(_) => "spool_failed",
        }
    }
}

/// Why a push was not answered 200.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl PushError {
    pub fn status(&self) -> StatusCode {
        match self {
            PushError::Rejected(r) => r.status(),
            PushError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            PushError::Rejected(r) => r.reason(),
            PushError::Unavailable(u) => u.reason(),
        }
    }
}

impl From<ParseError> for PushError {
    fn from(e: ParseError) -> Self {
        PushError::Rejected(e.into())
    }
}
