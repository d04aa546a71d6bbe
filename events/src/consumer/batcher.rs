//! Requests that deliveries make one at a time and one task answers in batches: whatever is
//! asked while a call is under way goes in the next, one call per group of requests (a stream, a
//! rate limit), each request answered on its own channel. Idempotency holds and rate-limit places
//! are asked for this way.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

/// Most requests answered in one batch.
const MAX_BATCH: usize = 1_000;

/// What a [`Batcher`] asks Redis, and how.
pub(crate) trait Answering: Send + Sync + 'static {
    /// One request.
    type Request: Send + 'static;
    /// What the requests answered by one call share.
    type Group: Hash + Eq + Send;
    /// One request's answer.
    type Answer: Send + 'static;

    /// The group `request` is answered with.
    fn group(request: &Self::Request) -> Self::Group;

    /// Answers `requests` of `group` in one call, in their order.
    fn answer(
        &self,
        group: &Self::Group,
        requests: &[Self::Request],
    ) -> impl Future<Output = redis::RedisResult<Vec<Self::Answer>>> + Send;
}

/// A request and where its answer goes.
type Asked<A> = (
    <A as Answering>::Request,
    oneshot::Sender<redis::RedisResult<<A as Answering>::Answer>>,
);

/// Where requests are made; the answering task ends when every clone is dropped.
pub(crate) struct Batcher<A: Answering> {
    requests: mpsc::UnboundedSender<Asked<A>>,
    /// What answers them, for callers with a batch of their own.
    answering: Arc<A>,
}

impl<A: Answering> Clone for Batcher<A> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
            answering: Arc::clone(&self.answering),
        }
    }
}

impl<A: Answering> std::fmt::Debug for Batcher<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<A: Answering> Batcher<A> {
    /// Starts the task answering requests with `answering`.
    pub(crate) fn serve(answering: A) -> (Self, AbortOnDropHandle<()>) {
        let (requests, receiver) = mpsc::unbounded_channel();
        let answering = Arc::new(answering);
        let task = tokio::spawn(answer_batches(Arc::clone(&answering), receiver));
        (
            Self {
                requests,
                answering,
            },
            AbortOnDropHandle::new(task),
        )
    }

    /// What answers the requests: a caller with a batch of its own asks it directly, in one call,
    /// rather than a request at a time.
    pub(crate) fn answering(&self) -> &A {
        &self.answering
    }

    /// The answer to `request`, with the next batch.
    pub(crate) async fn ask(&self, request: A::Request) -> redis::RedisResult<A::Answer> {
        let stopped =
            || redis::RedisError::from((redis::ErrorKind::Client, "the consumer is stopping"));
        let (reply, answer) = oneshot::channel();
        if self.requests.send((request, reply)).is_err() {
            return Err(stopped());
        }
        // The task answers every request it takes; it ends only after every sender.
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn answer_batches<A: Answering>(
    answering: Arc<A>,
    mut receiver: mpsc::UnboundedReceiver<Asked<A>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut groups: HashMap<A::Group, (Vec<A::Request>, Vec<_>)> = HashMap::new();
        for (request, reply) in batch.drain(..) {
            let (requests, replies) = groups.entry(A::group(&request)).or_default();
            requests.push(request);
            replies.push(reply);
        }
        for (group, (requests, replies)) in groups {
            match answering.answer(&group, &requests).await {
                Ok(answers) => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }
}
