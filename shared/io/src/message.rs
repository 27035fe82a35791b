//! A message as a queue delivered it, whichever host received it: the captioning engine's batch
//! pipeline takes these, so it needs neither the Lambda event types nor the SQS client.

/// One delivered message: its id (what a host reports or deletes it by) and its body.
pub trait QueueMessage: Send + Sync {
    fn message_id(&self) -> &str;
    /// `None` when the message arrived without a body.
    fn body(&self) -> Option<&str>;
}

/// A delivered message as plain data: what a host that owns nothing more (a Lambda SQS record,
/// once its id is checked) hands the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    pub message_id: String,
    pub body: Option<String>,
}

impl Delivery {
    pub fn new(message_id: impl Into<String>, body: Option<String>) -> Self {
        Delivery {
            message_id: message_id.into(),
            body,
        }
    }
}

impl QueueMessage for Delivery {
    fn message_id(&self) -> &str {
        &self.message_id
    }

    fn body(&self) -> Option<&str> {
        self.body.as_deref()
    }
}
