//! Idempotency holds, taken in batches: deliveries ask for their event's key, and one task asks
//! Redis for every key asked for meanwhile, in one script call per stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

use super::group::{Group, Hold};

/// Most keys taken in one script call.
const MAX_BATCH: usize = 1_000;

/// One delivery's request for its key.
#[derive(Debug)]
struct Request {
    stream: Arc<str>,
    key: String,
    token: String,
    hold: Duration,
    reply: oneshot::Sender<Answer>,
}

/// What a request gets back: the hold, or why none could be taken, and its key and token.
type Answer = (redis::RedisResult<Hold>, String, String);

/// Where deliveries ask for idempotency holds. The serving task ends when every clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Holds {
    requests: mpsc::UnboundedSender<Request>,
}

impl Holds {
    /// Starts the task that takes holds through `group`.
    pub(crate) fn serve<C>(group: Group<C>) -> (Self, AbortOnDropHandle<()>)
    where
        C: ConnectionLike + Clone + Send + Sync + 'static,
    {
        let (requests, receiver) = mpsc::unbounded_channel();
        (
            Self { requests },
            AbortOnDropHandle::new(tokio::spawn(take_batches(group, receiver))),
        )
    }

    /// Takes `key` of `stream` for the delivery `token`, for at most `hold`; gives back the key and
    /// token with the answer.
    pub(crate) async fn take(
        &self,
        stream: &Arc<str>,
        key: String,
        token: String,
        hold: Duration,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        let stopped =
            || redis::RedisError::from((redis::ErrorKind::Client, "the consumer is stopping"));
        let request = Request {
            stream: Arc::clone(stream),
            key,
            token,
            hold,
            reply,
        };
        if let Err(unsent) = self.requests.send(request) {
            let Request { key, token, .. } = unsent.0;
            return (Err(stopped()), key, token);
        }
        // The serving task answers every request it takes; it ends only after every sender.
        answer
            .await
            .unwrap_or_else(|_| (Err(stopped()), String::new(), String::new()))
    }
}

async fn take_batches<C>(group: Group<C>, mut receiver: mpsc::UnboundedReceiver<Request>)
where
    C: ConnectionLike + Clone + Send + Sync,
{
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut by_stream: HashMap<(Arc<str>, Duration), Vec<Request>> = HashMap::new();
        for request in batch.drain(..) {
            by_stream
                .entry((Arc::clone(&request.stream), request.hold))
                .or_default()
                .push(request);
        }
        for ((_, hold), requests) in by_stream {
            let holds = requests
                .iter()
                .map(|request| (request.key.as_str(), request.token.as_str()));
            let results: Vec<redis::RedisResult<Hold>> = match group.begin(holds, hold).await {
                Ok(results) => results.into_iter().map(Ok).collect(),
                Err(error) => vec![Err(error); requests.len()],
            };
            for (request, result) in requests.into_iter().zip(results) {
                let _ = request.reply.send((result, request.key, request.token));
            }
        }
    }
}
